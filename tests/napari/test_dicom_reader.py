"""The DICOM reader: a folder dropped on the viewer opens like the NIfTI of the same voxels."""

from __future__ import annotations

import numpy as np

from moec_napari.dicom_reader import get_dicom_reader
from moec_napari.layer_meta import META
from moec_napari.layers import volume_of_layer

from ..conftest import PATIENT, dicom_affine, write_dicom_series, write_nifti
from ..test_dicom import ct_raw

AXIAL = {
    "row_cos": np.array([1.0, 0.0, 0.0]),
    "col_cos": np.array([0.0, 1.0, 0.0]),
    "origin": np.array([-90.0, -110.0, -40.0]),
}


def test_a_dicom_folder_opens_through_the_plugin_like_its_nifti(make_napari_viewer, tmp_path):
    raw = ct_raw((24, 20, 12))
    write_dicom_series(tmp_path / "axial", raw, slope=1.0, inter=-1024.0, **AXIAL)
    nifti = tmp_path / "axial.nii.gz"
    write_nifti(
        nifti, raw, dicom_affine(AXIAL["row_cos"], AXIAL["col_cos"], AXIAL["origin"], (0.8, 0.7), 2.5), inter=-1024.0
    )
    viewer = make_napari_viewer()
    [series] = viewer.open(str(tmp_path / "axial"), plugin="moec-napari")
    [reference] = viewer.open(str(nifti), plugin="moec-napari")
    np.testing.assert_array_equal(series.data, reference.data)
    np.testing.assert_allclose(series.scale, reference.scale, atol=1e-6)
    np.testing.assert_allclose(series.scale, (2.5, 0.8, 0.7), atol=1e-6)  # display order: I, P, L
    np.testing.assert_allclose(series.translate, reference.translate, atol=1e-4)
    assert series.name == "Thorax" and tuple(series.contrast_limits) == tuple(reference.contrast_limits)
    assert series.metadata[META]["dicom"]["PatientID"] == PATIENT["PatientID"]
    # What the widget compresses is the series' own voxels, in its file order.
    volume, _ = volume_of_layer(series)
    np.testing.assert_array_equal(volume.data, raw.astype(np.float32) - 1024)

    # A folder of two series gives a layer each; files and other folders are not ours.
    write_dicom_series(tmp_path / "exam", raw, series_uid="1.2.3.9.1", series_number=2, description="Lung", **AXIAL)
    write_dicom_series(
        tmp_path / "exam",
        raw[:16, :14, :10],
        series_uid="1.2.3.9.2",
        series_number=5,
        modality="MR",
        description="T2",
        seed=3,
        **AXIAL,
    )
    layers = viewer.open(str(tmp_path / "exam"), plugin="moec-napari")
    assert [layer.name for layer in layers] == ["Lung", "T2"]  # a series is named by its description
    assert layers[1].data.shape == (10, 14, 16)
    assert get_dicom_reader(str(nifti)) is None and get_dicom_reader(str(tmp_path / "nothing")) is None
    (tmp_path / "empty").mkdir()
    assert get_dicom_reader(str(tmp_path / "empty")) is None
