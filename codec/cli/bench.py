"""`moec bench`: MoEC and the classical codecs on one volume or several, cell by cell, one report."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

#: The command line's names for codec.bench.classical.CODECS (written here so that `moec --help`
#: does not import the codecs' module).
CODEC_KEYS = {
    "j2k": "JPEG 2000",
    "hevc": "HEVC (x265)",
    "h264": "H.264 (x264)",
    "av1": "AV1 (libaom)",
    "sperr": "SPERR",
}


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from codec.bench import runs
    from codec.errors import VolumeError
    from codec.io.load import load_volume
    from codec.settings import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = [Path(p) for p in args.input]
    if len(inputs) > 1 and args.series:
        raise VolumeError("--series picks a series of one DICOM folder; give one input with it")
    for line in runs.describe_missing():
        print(f"note: {line}", file=sys.stderr)
    config = TrainConfig(minutes=args.minutes, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    options = {
        "ratios": tuple(args.ratios),
        "config": config,
        "codecs": tuple(CODEC_KEYS[c] for c in args.codecs),
        "ablations": args.ablations,
        "ablation_ratio": args.ablation_ratio,
        "moec": not args.classical_only,
        "seeds": args.seeds,
        "rows": args.rows,
    }
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if len(inputs) == 1:
        results = runs.run(load_volume(inputs[0], args.series), out, log=log, **options)
        plots = [out / "rd.png"] if "plot" not in results else []
        written = [out / "results.json", out / "results.md", *plots]
    else:
        names = volume_names(inputs)
        for path in inputs:
            if not path.exists():  # before hours of work on the others
                raise VolumeError(f"{path}: no such file or folder")
        runs.run_volumes(
            [(name, partial(load_volume, path)) for name, path in zip(names, inputs)], out, log=log, **options
        )
        written = [out / "results.md", *(out / name for name in names)]
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(map(str, written)))
    return 0


def volume_names(paths: list[Path]) -> list[str]:
    """A folder name for each volume of a multi-volume bench: the file name without its extension
    (brain.nii.gz: brain), numbered where two would be the same."""
    stems = []
    for path in paths:
        name = path.name
        for ext in (".nii.gz", ".nii", ".npy"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        stems.append(name or "volume")
    return [f"{s}-{i}" if stems.count(s) > 1 else s for i, s in enumerate(stems, 1)]
