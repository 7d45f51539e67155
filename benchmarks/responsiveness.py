"""The longest stall of napari's event loop while the plugin trains.

Opens the brain template with the plugin's reader in a real viewer, starts training from the dock
widget (default previews, ratio 256), and measures the gaps between ticks of a 10 ms QTimer until
the result is on screen. A second timer moves the slice slider every 250 ms, as a radiologist
scrolling through the volume would, so previews and repaints are part of the measurement. After
the result is shown, the same scrolling goes on for 10 s with nothing running: that row is the cost
of repainting the five layers themselves (software OpenGL under Xvfb), which training adds to.
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
IDLE_S = 10.0


def gap_stats(ticks: list[float], start: float, stop: float) -> dict:
    inside = np.asarray([t for t in ticks if start <= t <= stop])
    gaps = np.diff(inside) * 1000.0
    worst = int(np.argmax(gaps)) if len(gaps) else 0
    return {
        "ticks": len(inside),
        "seconds": float(stop - start),
        "longest_gap_ms": float(gaps.max()),
        "longest_at_s": float(inside[worst] - start),
        "p99_gap_ms": float(np.percentile(gaps, 99)),
        "gaps_over_100ms": int((gaps > 100).sum()),
        "median_gap_ms": float(np.median(gaps)),
    }


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
    widget.form.ratio.setValue(args.ratio)
    widget.form.minutes.setValue(args.minutes)

    ticks: list[float] = []
    phases: dict[str, float] = {}
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
        phases["training"] = time.perf_counter()
        tick.start()
        scroll.start()
        widget.train()
        widget.worker.returned.connect(lambda _: phases.__setitem__("shown", time.perf_counter()))
        widget.worker.finished.connect(lambda: QTimer.singleShot(int(1000 * IDLE_S), finish))

    def finish() -> None:
        phases["end"] = time.perf_counter()
        app.quit()

    QTimer.singleShot(500, started)
    napari.run()
    tick.stop()
    scroll.stop()
    # the result's stall belongs to training: its window ends 1 s after the result arrived
    split = phases["shown"] + 1.0
    rows = [
        {
            "phase": "scrolling while training, until the result is shown",
            "minutes": args.minutes,
            "torch_threads": training_threads(),
            **gap_stats(ticks, phases["training"], split),
            "steps": widget.result.steps if widget.result else None,
            "psnr": widget.result.quality.psnr if widget.result else None,
        },
        {
            "phase": "scrolling the same layers, nothing running",
            "minutes": None,
            "torch_threads": None,
            **gap_stats(ticks, split, phases["end"]),
            "steps": None,
            "psnr": None,
        },
    ]
    print(
        table(
            rows,
            [
                ("phase", "phase", ""),
                ("ticks", "ticks", ""),
                ("median gap ms", "median_gap_ms", ".1f"),
                ("99th pct gap ms", "p99_gap_ms", ".1f"),
                ("longest gap ms", "longest_gap_ms", ".1f"),
                ("at s", "longest_at_s", ".1f"),
                ("gaps > 100 ms", "gaps_over_100ms", ""),
            ],
        )
    )
    r = rows[0]
    print(
        f"\ntraining: {args.minutes:g} min budget, {r['torch_threads']} torch thread(s), {r['steps']} steps, "
        f"PSNR {r['psnr']:.2f} dB; result shown {phases['shown'] - phases['training']:.1f} s after Train"
    )
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    print(f"wrote {save('responsiveness', {'rows': rows, 'gaps_ms': gaps.round(2).tolist()})}")


if __name__ == "__main__":
    main()
