"""`python -m moec_napari.demo`: napari with the sample phantom and the MoEC dock widget.

With `--train` it starts training at once (a short budget), which is how the README screenshot is
made: `python -m moec_napari.demo --train --minutes 0.5 --screenshot docs/screenshot.png`.
"""

from __future__ import annotations

import argparse

import napari

from moec_napari.sample import phantom
from moec_napari.widget import MoecWidget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", action="store_true", help="start training immediately")
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--ratio", type=float, default=64.0)
    parser.add_argument("--screenshot", help="after training, save a screenshot here and quit")
    args = parser.parse_args()
    viewer = napari.Viewer(title="MoEC Viewer")
    viewer.window.resize(1600, 1000)
    data, kwargs, kind = phantom()[0]  # the volume; its tissue labels are one File > Open Sample away
    viewer.add_image(data, **kwargs)
    widget = MoecWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MoEC compression", area="right")
    widget.ratio.setValue(args.ratio)
    widget.minutes.setValue(args.minutes)
    if args.train or args.screenshot:
        widget.train()
    if args.screenshot:
        def shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()
        widget.worker.finished.connect(shoot)
    napari.run()


if __name__ == "__main__":
    main()
