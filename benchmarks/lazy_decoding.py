"""Opening a .moec file in napari: time to the first slice and per-slice scroll latency, with the
whole-volume decode the reader did before (`reconstruct`, then layers) against the lazy layers it
returns now (moec_napari.lazy: the slab on screen decoded when shown). Prints a table and writes
benchmarks/results/lazy_decoding.json.

The file is the development CT (512 x 512 x 61 int16) at 1024x, trained for a few steps: decoding
time depends on the network, not on how well it was trained. Times are for the three layers a
file opens as (reconstruction, experts, gate confidence); with --viewer (needs a display, e.g.
under xvfb-run) the first slice is also timed through a real napari viewer, from the reader call
to the layers added and drawn, in a viewer that has drawn a layer before.

    python benchmarks/lazy_decoding.py [--volume CT.nii.gz] [--ratio 1024] [--steps 60] [--viewer]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import CT, machine, save, table

from codec import pipeline
from codec.decode.reconstruct import reconstruct
from codec.format import moecfile
from codec.io.load import load_volume
from codec.settings import TrainConfig

THREADS = 2


def make_file(volume_path: Path, ratio: float, steps: int, folder: Path) -> Path:
    volume = load_volume(volume_path)
    config = TrainConfig(steps=steps)
    path = folder / "ct.moec"
    moecfile.write(path, pipeline.Compression(volume, pipeline.Settings(ratio=ratio), config).train().encode().data)
    return path


def whole_volume(path: Path) -> dict:
    """The reader before: decode every voxel, then every slice is an array index."""
    from moec_napari.derived import file_layers
    from moec_napari.layers import file_stem

    start = time.perf_counter()
    data = path.read_bytes()
    moec = moecfile.from_bytes(data, str(path))
    recon = reconstruct(moec)
    layers = file_layers(recon.volume, recon.labels, recon.confidence, data, moec.meta, file_stem(path))
    middle = layers[0][0].shape[0] // 2
    _ = [_slice(layer[0], middle) for layer in layers]
    first = time.perf_counter() - start
    return {
        "reader": "whole volume decoded first",
        "first_slice_s": first,
        "scroll_new_ms": _scroll(layers, _spread(layers[0][0].shape[0])) * 1e3,
        "scroll_cached_ms": _scroll(layers, [middle] * 5) * 1e3,
    }


def lazy(path: Path) -> dict:
    """The reader now: lazy layers, the slab on screen decoded when asked for."""
    from moec_napari.reader import read_moec

    start = time.perf_counter()
    layers = read_moec(str(path))
    opened = time.perf_counter() - start
    middle = layers[0][0].shape[0] // 2
    _ = [_slice(layer[0], middle) for layer in layers]
    first = time.perf_counter() - start
    new = _scroll(layers, _spread(layers[0][0].shape[0], avoid=middle))
    cached = _scroll(layers, [middle] * 5)
    return {
        "reader": "lazy (slab on screen)",
        "open_s": opened,
        "first_slice_s": first,
        "scroll_new_ms": new * 1e3,
        "scroll_cached_ms": cached * 1e3,
    }


def _spread(n: int, avoid: int | None = None, count: int = 8) -> list[int]:
    """Slices spread through the volume, each in another tile than the last (and than `avoid`)."""
    picks = [int(i) for i in np.linspace(1, n - 2, count)]
    return [i for i in picks if avoid is None or abs(i - avoid) > 8]


def _slice(array, i: int) -> np.ndarray:
    """Slice i decoded exactly (a progressive array's plain indexing would give its coarse preview)."""
    return array.exact(i) if hasattr(array, "exact") else np.asarray(array[i])


def _scroll(layers, indices: list[int]) -> float:
    """Median seconds to show slice i of all three layers, for each i in turn."""
    times = []
    for i in indices:
        start = time.perf_counter()
        _ = [_slice(layer[0], i) for layer in layers]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def through_viewer(path: Path) -> dict:
    """Seconds from the reader call to the three layers added to a shown viewer and drawn once, for
    the lazy layers, and for the same three layers as numpy arrays already decoded (napari's own
    cost of adding and drawing three 512 x 512 x 61 layers, which any reader pays)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from moec_napari.reader import read_moec  # imported before the clock, as a running plugin is

    viewer = napari.Viewer(show=True)
    # A viewer's first image and labels layers compile their shaders (whatever the data): a user
    # drops a file on a viewer that already runs, so that is paid before the clock.
    viewer.add_image(np.zeros((4, 8, 8), np.float32))
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8))
    QApplication.processEvents()

    def shown(layers) -> float:
        viewer.layers.clear()
        QApplication.processEvents()
        start = time.perf_counter()
        for data, kwargs, kind in layers():
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        QApplication.processEvents()
        return time.perf_counter() - start

    decoded = [(np.asarray(data), kwargs, kind) for data, kwargs, kind in read_moec(str(path))]
    numpy_layers = shown(lambda: decoded)
    lazy_layers = shown(lambda: read_moec(str(path)))
    viewer.close()
    return {"numpy": numpy_layers, "lazy": lazy_layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, default=CT)
    parser.add_argument("--ratio", type=float, default=1024.0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--viewer", action="store_true", help="also time the first slice through a napari viewer")
    args = parser.parse_args()
    if not args.volume.exists():
        raise SystemExit(f"no volume at {args.volume}")
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as folder:
        path = make_file(args.volume, args.ratio, args.steps, Path(folder))
        moec = moecfile.read(path)
        rows = [whole_volume(path), lazy(path)]
        viewer = through_viewer(path) if args.viewer else None
    rows[0]["open_s"] = rows[0]["first_slice_s"]
    if viewer is not None:
        rows[1]["viewer_first_slice_s"] = viewer["lazy"]
        rows[0]["viewer_first_slice_s"] = viewer["numpy"] + rows[0]["first_slice_s"]
    print(
        f"{args.volume.name}: {' x '.join(map(str, moec.meta.shape))}, {moec.ratio:.0f}x, "
        f"{moec.meta.model.experts} experts, {THREADS} threads"
    )
    print(
        table(
            rows,
            [
                ("reader", "reader", ""),
                ("layers added (s)", "open_s", ".2f"),
                ("first slice (s)", "first_slice_s", ".2f"),
                ("scroll, new slab (ms)", "scroll_new_ms", ".0f"),
                ("scroll, decoded slab (ms)", "scroll_cached_ms", ".1f"),
            ],
        )
    )
    if viewer is not None:
        print(
            f"\nthrough a napari viewer, from the reader call to the three layers drawn: lazy "
            f"{viewer['lazy']:.2f} s; "
            f"the same layers already decoded (napari's own cost) {viewer['numpy']:.2f} s, so "
            f"{rows[0]['viewer_first_slice_s']:.2f} s with the whole volume decoded first"
        )
    out = save(
        "lazy_decoding",
        {
            "machine": machine(),
            "volume": str(args.volume),
            "shape": list(moec.meta.shape),
            "ratio": moec.ratio,
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
