"""`moec bench`: MoEC and the classical codecs on one volume, cell by cell, one report."""

from __future__ import annotations

import sys
from pathlib import Path

#: The command line's names for codec.bench.classical.CODECS (written here so that `moec --help`
#: does not import the codecs' module).
CODEC_KEYS = {"j2k": "JPEG 2000", "hevc": "HEVC (x265)", "h264": "H.264 (x264)"}


def cmd_bench(args) -> int:
    import torch

    from codec.bench import runs
    from codec.io.volume import load_volume
    from codec.settings import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    volume = load_volume(args.input, args.series)
    for line in runs.describe_missing():
        print(f"note: {line}", file=sys.stderr)
    config = TrainConfig(minutes=args.minutes, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    codecs = tuple(CODEC_KEYS[c] for c in args.codecs)
    results = runs.run(volume, out, tuple(args.ratios), config, codecs=codecs, ablations=args.ablations,
                       ablation_ratio=args.ablation_ratio, moec=not args.classical_only, seeds=args.seeds,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}"
          + (f", {out / 'rd.png'}" if "plot" not in results else f" ({results['plot']})"))
    return 0

