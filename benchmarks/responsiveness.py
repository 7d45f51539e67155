"""The longest stall of napari's event loop while the plugin trains, and while a lazy .moec is viewed.

Training (the default): opens the brain template with the plugin's reader in a real viewer,
starts training from the dock widget (default previews, ratio 256), and measures the gaps between
ticks of a 10 ms QTimer until the result is on screen. A second timer moves the slice slider every
250 ms, as a radiologist scrolling through the volume would, so previews and repaints are part of
the measurement. After the result is shown, the same scrolling goes on for 10 s with nothing
running: that row is the cost of repainting the five layers themselves (software OpenGL under
Xvfb), which training adds to. Prints a table and writes benchmarks/results/responsiveness.json.
Needs a display (Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/responsiveness.py [--minutes 1]

With --volume ct --stop-after S it trains the development chest CT and presses Stop after S
seconds; it also times the Train and Stop clicks' handlers, and how long after Stop the stopped
model's slice, the decoded file and its figures are on screen ("clicks" in the JSON).

Viewing a .moec (--lazy): compresses the development chest CT once (1024x, 300 steps, kept in
benchmarks/results/tmp/), opens it with the plugin's reader alone in a fresh viewer, and measures
the same 10 ms tick gaps phase by phase: opening; scrolling axial slices every 250 ms; switching to
the coronal view (viewer.dims.order) and scrolling it; switching to the sagittal view; then the
same at decode scale 2 (lazy_decode on the 2x grid, as the dock widget's Load runs it). Each pass
is run first on the same three layers as zeros (the same shapes, dtypes and settings: napari's own
cost of showing layers of that size, which any reader pays), then on the file's. A tiny image and
labels layer go first (a viewer's first layers cost seconds of napari's own, its unit registry,
imports and shaders, whatever they show: a user dropping a file on a running viewer has paid
them). A phase's window runs from its action to the next one, and counts the gap its action itself
caused; a reslice's phase lasts until the background decoder is idle (at most a few minutes), and
"exact s" is when it was, the exact planes on screen (with the code before progressive decoding,
which decoded on the GUI thread: when the action returned). The rows go under "lazy" in
benchmarks/results/responsiveness.json (--key names another entry, e.g. a run of older code):

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/responsiveness.py --lazy
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import BRAIN, CT, RESULTS, machine, save, table

from codec.io.files import atomic_write_bytes

TICK_MS = 10
SCROLL_MS = 250
IDLE_S = 10.0
#: The lazy scenario's file: the development CT at 1024x, compressed once and kept.
LAZY_RATIO = 1024
LAZY_STEPS = 300
LAZY_FILE = RESULTS / "tmp" / f"{CT.name.split('.')[0]}-r{LAZY_RATIO}-s{LAZY_STEPS}.moec"
#: The lazy scenario's first row, which the longest stall leaves out: napari's own first layers.
WARM_UP = "napari's first layers in the viewer (4 x 8 x 8, before the file)"
#: The rows of napari alone: the file's three layers as zeros, through the same phases.
ZEROS = "zeros"
#: Every third slice while scrolling (each in another tile of the CT's one-slice tiles).
SCROLL_STEP = 3


def gap_stats(ticks: list[float], start: float, stop: float, *, before: bool = False) -> dict:
    """The gaps between the ticks in [start, stop] (`before`: and from the last tick before `start`,
    so that a stall that began with an action at `start` counts in full)."""
    inside = [t for t in ticks if start <= t <= stop]
    earlier = [t for t in ticks if t < start] if before else []
    stamps = np.asarray(earlier[-1:] + inside)
    gaps = np.diff(stamps) * 1000.0
    worst = int(np.argmax(gaps)) if len(gaps) else 0
    return {
        "ticks": len(inside),
        "seconds": float(stop - start),
        "longest_gap_ms": float(gaps.max()),
        "longest_at_s": float(stamps[worst] - start),
        "p99_gap_ms": float(np.percentile(gaps, 99)),
        "gaps_over_100ms": int((gaps > 100).sum()),
        "median_gap_ms": float(np.median(gaps)),
    }


def kept_entries() -> dict:
    """What responsiveness.json holds besides the entry being rewritten (the other scenario's)."""
    path = RESULTS / "responsiveness.json"
    if not path.exists():
        return {}
    previous = json.loads(path.read_text())
    previous.pop("machine", None)
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget (default 1)")
    parser.add_argument("--ratio", type=float, default=256.0)
    parser.add_argument("--volume", choices=("template", "ct"), default="template", help="the volume trained on")
    parser.add_argument(
        "--stop-after", type=float, default=None, help="press Stop this many seconds after Train (default: no Stop)"
    )
    parser.add_argument("--lazy", action="store_true", help="view a lazy .moec instead of training")
    parser.add_argument("--key", default="lazy", help="the JSON entry of a --lazy run (default lazy)")
    args = parser.parse_args()
    if args.lazy:
        lazy(args.key)
    else:
        training(args)


def training(args) -> None:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from moec_napari.job import Decoded, Preview
    from moec_napari.reader import get_reader
    from moec_napari.widget import MoecWidget, training_threads

    path = CT if args.volume == "ct" else BRAIN
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in get_reader(str(path))(str(path)):
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

    def on_item(item) -> None:
        """Record, after the widget has shown it, when each kind of item first arrived (after a Stop)."""
        now = time.perf_counter()
        stopped = "stop" in phases
        if isinstance(item, Preview) and stopped:
            phases.setdefault("stop_preview", now)
        elif isinstance(item, Decoded):
            phases.setdefault("decoded", now)
        elif type(item).__name__ == "Progress":
            phases.setdefault("first_progress", now)

    def started() -> None:
        phases["training"] = time.perf_counter()
        tick.start()
        scroll.start()
        widget.train()
        phases["train_click_ms"] = 1000 * (time.perf_counter() - phases["training"])
        widget.worker.yielded.connect(on_item)  # connected after the widget's own: runs after it
        widget.worker.returned.connect(lambda _: phases.__setitem__("shown", time.perf_counter()))
        widget.worker.finished.connect(lambda: QTimer.singleShot(int(1000 * IDLE_S), finish))
        if args.stop_after is not None:
            QTimer.singleShot(int(1000 * args.stop_after), stop)

    def stop() -> None:
        phases["stop"] = time.perf_counter()
        widget.stop()
        phases["stop_click_ms"] = 1000 * (time.perf_counter() - phases["stop"])

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
        f"\ntraining {path.name}: {args.minutes:g} min budget, {r['torch_threads']} torch thread(s), "
        f"{r['steps']} steps, PSNR {r['psnr']:.2f} dB; result shown {phases['shown'] - phases['training']:.1f} s "
        "after Train"
    )

    def since(a: str, b: str) -> float | None:
        return phases[b] - phases[a] if a in phases and b in phases else None

    clicks = {
        "volume": path.name,
        "train_click_ms": phases["train_click_ms"],
        "train_to_first_progress_s": since("training", "first_progress"),
        "stop_click_ms": phases.get("stop_click_ms"),
        "stop_to_model_on_screen_s": since("stop", "stop_preview"),
        "stop_to_decoded_file_s": since("stop", "decoded"),
        "stop_to_figures_s": since("stop", "shown"),
        "train_to_figures_s": since("training", "shown"),
    }
    for name, value in clicks.items():
        print(f"{name}: {value if isinstance(value, str) or value is None else f'{value:.2f}'}")
    gaps = np.diff(np.asarray(ticks)) * 1000.0
    entries = {**kept_entries(), "rows": rows, "clicks": clicks, "gaps_ms": gaps.round(2).tolist()}
    print(f"wrote {save('responsiveness', entries)}")


def lazy_file() -> Path:
    if not LAZY_FILE.exists():
        from codec.cli import main as moec

        if not CT.exists():
            raise SystemExit(f"the development CT is not at {CT}")
        LAZY_FILE.parent.mkdir(parents=True, exist_ok=True)
        args = ["compress", str(CT), "-o", str(LAZY_FILE), "--ratio", str(LAZY_RATIO), "--steps", str(LAZY_STEPS)]
        if moec([*args, "--quiet"]) != 0:
            raise SystemExit("compressing the CT failed")
    return LAZY_FILE


def lazy(key: str) -> None:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    import moec_napari.lazy as lazy_module
    from codec.format.header import read_meta
    from codec.io.resample import spatially_scaled
    from moec_napari.job import load
    from moec_napari.reader import get_reader

    try:  # the plugin's hook that refreshes progressive layers (absent in the code before it)
        from moec_napari.progressive import follow_progressive_layers
    except ImportError:
        follow_progressive_layers = None
    pending = getattr(lazy_module, "pending", None)

    path = lazy_file()
    data = path.read_bytes()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    if follow_progressive_layers is not None:
        follow_progressive_layers(viewer)
    app = QApplication.instance()

    ticks: list[float] = []
    idle: list[float] = []  # when the background decoder was seen idle
    tick = QTimer()
    tick.setInterval(TICK_MS)

    def on_tick() -> None:
        now = time.perf_counter()
        ticks.append(now)
        if pending is not None and pending() == 0:
            idle.append(now)

    tick.timeout.connect(on_tick)
    scroll = QTimer()
    scroll.setInterval(SCROLL_MS)

    def move() -> None:
        axis = viewer.dims.not_displayed[0]
        step = (viewer.dims.current_step[axis] + SCROLL_STEP) % viewer.dims.nsteps[axis]
        viewer.dims.set_current_step(axis, step)

    scroll.timeout.connect(move)
    shape_2x = spatially_scaled(tuple(read_meta(data, str(path)).shape), 2.0)

    def read_file() -> list:
        return get_reader(str(path))(str(path))

    def read_2x() -> list:
        loaded = load(None, None, data, str(path), shape_2x)  # what the dock widget's Load runs
        return getattr(loaded, "layers", loaded)  # the file's layer data (a list, or in FileLayers)

    def zeros(layers: list) -> list:
        """napari's own cost: the same layers (shapes, dtypes, settings) as zeros, read-only views
        of one voxel. The reader is called here, before the clock, only for them: nothing decodes."""
        return [(np.broadcast_to(np.zeros((), d.dtype), d.shape), kwargs, kind) for d, kwargs, kind in layers]

    def open_layers(layers) -> Callable[[], None]:
        def action() -> None:
            scroll.stop()
            viewer.layers.clear()
            viewer.dims.order = (0, 1, 2)  # axial
            for layer_data, kwargs, kind in layers():
                getattr(viewer, f"add_{kind}")(layer_data, **kwargs)

        return action

    def order(axes: tuple[int, ...]) -> Callable[[], None]:
        def action() -> None:
            scroll.stop()
            viewer.dims.order = axes

        return action

    def warm_up() -> None:  # napari's one-time costs of a viewer's first image and labels layers
        viewer.add_image(np.zeros((4, 8, 8), np.float32))
        viewer.add_labels(np.zeros((4, 8, 8), np.uint8))

    coronal, sagittal = (1, 0, 2), (2, 0, 1)  # the slider on P, then on L (axial: (0, 1, 2))
    views = [  # (phase, action, seconds at least, at most: it ends sooner once the decoder is idle)
        ("scroll axial slices (every 250 ms)", scroll.start, 6.0, 6.0),
        ("switch to coronal", order(coronal), 4.0, 150.0),
        ("scroll coronal slices", scroll.start, 5.0, 5.0),
        ("switch to sagittal", order(sagittal), 4.0, 150.0),
    ]
    zeros_1x, zeros_2x = zeros(read_file()), zeros(read_2x())
    plan = [(WARM_UP, "", warm_up, 3.0, 3.0)]
    for grid, what, layers, reference in (
        ("1x", "open the file (reader, 3 layers, first draw)", read_file, zeros_1x),
        ("2x", "open at decode scale 2 (1024 x 1024 x 122)", read_2x, zeros_2x),
    ):
        for kind, source in ((ZEROS, lambda reference=reference: reference), (".moec", layers)):
            label = f"{kind} {grid}"
            plan.append((what if kind != ZEROS else f"add the {grid} layers", label, open_layers(source), 4.0, 20.0))
            plan += [(phase, label, action, least, most) for phase, action, least, most in views]
    marks: list[dict] = []

    def run(index: int) -> None:
        if index == len(plan):
            marks.append({"start": time.perf_counter()})
            app.quit()
            return
        name, label, action, least, most = plan[index]
        start = time.perf_counter()
        action()
        marks.append(
            {"phase": name, "layers": label, "start": start, "action_ms": 1000 * (time.perf_counter() - start)}
        )

        def wait() -> None:
            now = time.perf_counter()
            done = pending is not None and pending() == 0
            if done:
                idle.append(now)
            if now - start >= most or (now - start >= least and (pending is None or done)):
                run(index + 1)
            else:
                QTimer.singleShot(100, wait)

        QTimer.singleShot(int(1000 * least), wait)

    def begin() -> None:
        tick.start()
        QTimer.singleShot(500, lambda: run(0))

    QTimer.singleShot(500, begin)
    napari.run()
    tick.stop()
    scroll.stop()
    rows = []
    for mark, after in zip(marks, marks[1:]):
        stats = gap_stats(ticks, mark["start"], after["start"], before=True)
        if not mark["layers"].startswith(".moec") or mark["phase"].startswith("scroll"):
            exact = None  # nothing to decode, or a scroll that never waits
        elif pending is None:  # decoding on the GUI thread: the detail is there when the action returns
            exact = mark["action_ms"] / 1000
        else:
            seen = [t for t in idle if mark["start"] + mark["action_ms"] / 1000 < t <= after["start"]]
            exact = min(seen) - mark["start"] if seen else None
        rows.append(
            {"phase": mark["phase"], "layers": mark["layers"], "action_ms": mark["action_ms"], "exact_s": exact}
        )
        rows[-1].update(stats)
    print(
        table(
            [{**r, "exact": "-" if r["exact_s"] is None else f"{r['exact_s']:.1f}"} for r in rows],
            [
                ("phase", "phase", ""),
                ("layers", "layers", ""),
                ("ticks", "ticks", ""),
                ("median gap ms", "median_gap_ms", ".1f"),
                ("99th pct gap ms", "p99_gap_ms", ".1f"),
                ("longest gap ms", "longest_gap_ms", ".1f"),
                ("gaps > 100 ms", "gaps_over_100ms", ""),
                ("action ms", "action_ms", ".0f"),
                ("exact s", "exact", ""),
            ],
        )
    )
    ours = max(r["longest_gap_ms"] for r in rows if r["layers"].startswith(".moec"))
    napari_own = max(r["longest_gap_ms"] for r in rows if r["layers"].startswith(ZEROS))
    print(
        f"\nlongest stall with the .moec layers {ours:.0f} ms ({'under' if ours < 250 else 'over'} the 250 ms target); "
        f"with the same layers as zeros (napari alone) {napari_own:.0f} ms; file {path}"
    )
    entry = {
        "machine": machine(),
        "file": str(path.relative_to(RESULTS.parent.parent)),
        "bytes": len(data),
        "longest_gap_ms": ours,
        "longest_gap_zeros_ms": napari_own,
        "rows": rows,
    }
    path = RESULTS / "responsiveness.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = entry  # beside the training rows, whose "machine" stays theirs
    atomic_write_bytes(path, json.dumps(results, indent=2, default=str).encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
