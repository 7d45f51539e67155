"""`python -m moec_napari.demo`: napari with the sample phantom and the MoEC dock widget.

With `--train` it starts training at once (a short budget); `--volume` opens another volume, which
is how the README's screenshots are made: `python -m moec_napari.demo --volume
../shared/data/chest_ct_lung2.nii.gz --ratio 256 --minutes 2 --show error --screenshot
docs/screenshot.png` (and the brain MR with `--experts 4 --show experts`). With
`--roi` the phantom gets a small textured lesion, painted as the region of interest, and the
screenshot shows its outline over the original and the reconstruction:
`python -m moec_napari.demo --roi --ratio 256 --minutes 1 --screenshot docs/roi.png`.
"""

from __future__ import annotations

import argparse

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from moec_napari.dicom_reader import get_dicom_reader
from moec_napari.layer_meta import Role
from moec_napari.layers import transforms_of
from moec_napari.napari_compat import grid
from moec_napari.reader import get_reader
from moec_napari.sample import phantom
from moec_napari.widget import MoecWidget

LESION_RADIUS = 5  # voxels of the phantom's display grid


def add_lesion(viewer, image):
    """A ring-enhancing lesion (a bright rim around a darker core) in the volume, and a Labels
    layer marking it (its ball dilated by a voxel), on the image's grid."""
    data = np.array(image.data)
    k, j, i = data.shape[0] // 2, int(data.shape[1] * 0.45), int(data.shape[2] * 0.3)
    zz, yy, xx = np.ogrid[: data.shape[0], : data.shape[1], : data.shape[2]]
    distance = np.sqrt(((zz - k) * image.scale[0] / image.scale[2]) ** 2 + (yy - j) ** 2 + (xx - i) ** 2)
    ball = distance <= LESION_RADIUS
    data[ball] = 20.0 + 120.0 * (distance[ball] / LESION_RADIUS) ** 2
    image.data = data
    roi = (distance <= LESION_RADIUS + 1).astype(np.uint8)
    return viewer.add_labels(roi, name="lesion ROI", **transforms_of(image)), k


def show_roi(viewer, widget, roi, index: int) -> None:
    """The original and the reconstruction side by side, each with the ROI's outline over it."""
    for role in (Role.ERROR, Role.EXPERTS, Role.CONFIDENCE):
        viewer.layers.remove(widget.derived[role])
    original, recon = widget.source, widget.derived[Role.RECONSTRUCTION]
    outline = viewer.add_labels(roi.data, name=f"{recon.name} ROI", **transforms_of(roi))
    for layer, target in ((roi, original), (outline, recon)):
        layer.contour = 1
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(target) + 1)
    grid(viewer).stride = 2
    viewer.dims.set_point(0, original.data_to_world((index, 0, 0))[0])
    QApplication.processEvents()  # the grid lays its views out first, or the camera fits a stale extent
    viewer.reset_view()
    QApplication.processEvents()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", action="store_true", help="start training immediately")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--ratio", type=float, default=64.0)
    parser.add_argument("--screenshot", help="after training, save a screenshot here and quit")
    parser.add_argument("--roi", action="store_true", help="add a lesion and train with it as the region of interest")
    parser.add_argument("--volume", help="a NIfTI file or DICOM folder to open instead of the phantom")
    parser.add_argument("--experts", type=int, default=0, help="number of experts (0: auto)")
    parser.add_argument(
        "--show", default="", help="derived layers to show after training, comma-separated: error, experts, confidence"
    )
    args = parser.parse_args()
    viewer = napari.Viewer(title="MoEC Viewer")
    viewer.window.resize(1600, 1000)
    if args.volume:
        read = get_reader(args.volume) or get_dicom_reader(args.volume)
        if read is None:
            parser.error(f"{args.volume} is neither a NIfTI file nor a DICOM folder")
        data, kwargs, kind = read(args.volume)[0]
    else:
        data, kwargs, kind = phantom()[0]  # the volume; its tissue labels are one File > Open Sample away
    image = viewer.add_image(data, **kwargs)
    roi, index = add_lesion(viewer, image) if args.roi else (None, 0)
    widget = MoecWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MoEC compression", area="right")
    widget.form.ratio.setValue(args.ratio)
    widget.form.minutes.setValue(args.minutes)
    widget.form.experts.setValue(args.experts)
    if roi is not None:
        widget.form.roi_box.setCurrentText(roi.name)
    if args.train or args.screenshot:
        widget.train()
    if args.screenshot:

        def shoot():
            if roi is not None:
                show_roi(viewer, widget, roi, index)
            shown = [Role(name.strip()) for name in filter(None, args.show.split(","))]
            for role in shown:
                widget.show_boxes[role].setChecked(True)
            if Role.EXPERTS in shown:  # the per-expert table in view: the figures above it folded
                widget.results.metrics_section.collapse()
            for _ in range(3):  # the status line wraps and the views reset once the layout settles
                QApplication.processEvents()
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        widget.worker.finished.connect(shoot)
    napari.run()


if __name__ == "__main__":
    main()
