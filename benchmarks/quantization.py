"""Float16 weights against quantized, entropy-coded weights at equal file size.

On the brain template at 256x and 1024x, the same training time for every row; then, at 256x, the
measurements that chose the defaults: bit width, extra bits for the omega_0 layer, per-tensor or
per-channel steps. Prints Markdown tables and writes benchmarks/results/quantization.json. Finished rows
are kept in benchmarks/results/quantization.cells.json, so an interrupted run resumes where it stopped.

    python benchmarks/quantization.py [--minutes 3] [--quick]
"""

from __future__ import annotations

import argparse

from common import Cells, brain, compress, save, table

from codec import pipeline
from codec.settings import TrainConfig

COLUMNS = [
    ("ratio asked", "asked", "g"),
    ("weights", "weights", ""),
    ("ratio on file", "ratio", ".1f"),
    ("bytes", "bytes", ","),
    ("parameters", "parameters", ","),
    ("bits/weight", "bits_per_weight", ".2f"),
    ("steps", "steps", ""),
    ("PSNR dB", "psnr", ".2f"),
    ("SSIM", "ssim", ".4f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="only the float16 vs quantized rows")
    args = parser.parse_args()
    volume = brain()
    config = TrainConfig(minutes=args.minutes)
    cells = Cells("quantization")

    def row(ratio: float, name: str, **settings) -> dict:
        key = f"{ratio:g}x {name} {args.minutes:g} min"
        result = dict(cells.get(key, lambda: compress(volume, pipeline.Settings(ratio=ratio, **settings), config)))
        result.update(asked=ratio, weights=name)
        print(table([result], COLUMNS).splitlines()[-1], flush=True)
        return result

    print(f"brain template {volume.shape}, {args.minutes:g} min of training per row\n")
    print(table([], COLUMNS))
    main_rows = []
    for ratio in (256, 1024):
        main_rows.append(row(ratio, "float16", bits=16))
        main_rows.append(row(ratio, "8-bit + range coding", bits=8))
    sweep = []
    if not args.quick:
        for bits in (6, 7, 10):
            sweep.append(row(256, f"{bits}-bit", bits=bits))
        for extra in (0, 4):
            sweep.append(row(256, f"8-bit, first layer +{extra}", bits=8, first_layer_extra_bits=extra))
        sweep.append(row(256, "8-bit, per-channel steps", bits=8, granularity="channel"))
    path = save("quantization", {"minutes": args.minutes, "main": main_rows, "sweep": sweep})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
