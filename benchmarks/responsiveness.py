"""Issue 4's benchmark: the longest stall of napari's event loop while the plugin trains.

Opens the brain template with the plugin's reader in a real viewer, starts training from the dock
widget (default previews, ratio 256), and measures the gaps between ticks of a 10 ms QTimer until
the result is on screen. A second timer moves the slice slider every 250 ms, as a radiologist
scrolling through the volume would, so previews and repaints are part of the measurement.
Prints a table and writes benchmarks/results/responsiveness.json. Needs a display (Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/responsiveness.py [--minutes 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import BRAIN, save, table

TICK_MS = 10
SCROLL_MS = 250


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget (default 1)")
    parser.add_argument("--ratio", type=float, default=256.0)
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from moec_napari.reader import get_reader
    from moec_napari.widget import MoecWidget, training_threads

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in get_reader(str(BRAIN))(str(BRAIN)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = MoecWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.ratio.setValue(args.ratio)
    widget.minutes.setValue(args.minutes)

    ticks: list[float] = []
    phases: list[tuple[float, str]] = []
    tick = QTimer()
    tick.setInterval(TICK_MS)
    tick.timeout.connect(lambda: ticks.append(time.perf_counter()))
    scroll = QTimer()
    scroll.setInterval(SCROLL_MS)
    axis = viewer.dims.not_displayed[0]
    n = viewer.dims.nsteps[axis]
    position = {"step": 0}

    def move() -> None:
        position["step"] = (position["step"] + 7) % n
        viewer.dims.set_current_step(axis, position["step"])

    scroll.timeout.connect(move)
    app = QApplication.instance()

    def started() -> None:
        phases.append((time.perf_counter(), "training"))
        tick.start()
        scroll.start()
        widget.train()
        widget.worker.returned.connect(lambda _: phases.append((time.perf_counter(), "result shown")))
        widget.worker.finished.connect(lambda: QTimer.singleShot(1000, app.quit))

    QTimer.singleShot(500, started)
    napari.run()
    tick.stop()
    scroll.stop()
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    stalls = gaps - TICK_MS
    row = {
        "minutes": args.minutes, "ratio": args.ratio, "torch_threads": training_threads(),
        "ticks": len(ticks), "seconds": float(ticks[-1] - ticks[0]) if ticks else 0.0,
        "longest_gap_ms": float(gaps.max()), "p99_gap_ms": float(np.percentile(gaps, 99)),
        "gaps_over_100ms": int((gaps > 100).sum()), "median_gap_ms": float(np.median(gaps)),
        "steps": widget.result.steps if widget.result else None,
        "psnr": widget.result.quality.psnr if widget.result else None,
    }
    print(table([row], [("budget (min)", "minutes", "g"), ("torch threads", "torch_threads", ""),
                        ("ticks", "ticks", ""), ("median gap ms", "median_gap_ms", ".1f"),
                        ("99th pct gap ms", "p99_gap_ms", ".1f"), ("longest gap ms", "longest_gap_ms", ".1f"),
                        ("gaps > 100 ms", "gaps_over_100ms", ""), ("steps", "steps", ""), ("PSNR dB", "psnr", ".2f")]))
    worst = int(np.argmax(gaps)) if len(gaps) else 0
    print(f"\nlongest gap at {ticks[worst] - ticks[0]:.1f} s of {row['seconds']:.1f} s; stall beyond the tick: "
          f"{stalls.max():.1f} ms")
    print(f"wrote {save('responsiveness', {'rows': [row], 'gaps_ms': gaps.round(2).tolist()})}")


if __name__ == "__main__":
    main()
