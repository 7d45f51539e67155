"""The strongest classical codecs a user can install, on the development volumes: JPEG 2000, HEVC
(x265), H.264 (x264), AV1 (libaom) and SPERR at 256x, 1024x and 4096x, each driven to the ratio by
its own search and measured as `moec bench` measures (codec.bench.classical: the ratio on the codec's
own bytes, PSNR with peak = max - min, 3D SSIM, the kept setting's encode seconds and its decode
seconds). Prints a table per volume and the best codec per cell, and writes
benchmarks/results/classical_strongest.json; finished cells are kept in
benchmarks/results/classical_strongest.cells.json, so a rerun skips them.

    python benchmarks/classical_strongest.py [--ratios 256 1024 4096] [--codecs AV1 SPERR ...]
"""

from __future__ import annotations

import argparse
import functools
import time
from functools import partial
from pathlib import Path

from common import BRAIN, CT, ROOT, Cells, save, table

from codec.bench import classical
from codec.io.limits import cpu_cores
from codec.io.load import load_volume
from codec.io.volume import Volume

MR = ROOT.parent / "shared" / "data" / "brain_mr_brain2.nii.gz"
VOLUMES = {"MNI152 brain (uint8)": BRAIN, "chest CT (int16)": CT, "brain MR (int16)": MR}
RATIOS = (256.0, 1024.0, 4096.0)


@functools.lru_cache(maxsize=1)  # the cells run volume by volume
def volume_at(path: Path) -> Volume:
    return load_volume(path)


def measure(path: Path, codec: str, ratio: float) -> dict:
    volume = volume_at(path)
    start = time.perf_counter()
    result = classical.compress(volume, codec, ratio)
    return {
        "reached": result.reached,
        "ratio": result.ratio,
        "bytes": result.nbytes,
        "psnr": result.psnr,
        "ssim": result.ssim,
        "encode_seconds": result.encode_seconds,
        "decode_seconds": result.decode_seconds,
        "search_seconds": time.perf_counter() - start,  # every encode of the search, and the measures
        "setting": result.setting,
        "note": result.note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--codecs", nargs="+", default=list(classical.CODECS), choices=classical.CODECS)
    args = parser.parse_args()
    available = classical.availability()
    codecs = [c for c in args.codecs if available[c] is None]
    skipped = {c: available[c] for c in args.codecs if available[c] is not None}
    for codec, reason in skipped.items():
        print(f"skipping {codec}: {reason}")
    cells = Cells("classical_strongest")
    rows = []
    for name, path in VOLUMES.items():
        for ratio in args.ratios:
            for codec in codecs:
                key = f"{path.name}|{codec}|{ratio:g}"
                fresh = key not in cells.done
                row = {
                    "volume": name,
                    "target": ratio,
                    "codec": codec,
                    **cells.get(key, partial(measure, path, codec, ratio)),
                }
                rows.append(row)
                if fresh:
                    print(f"{name} {ratio:g}x {codec}: " + (_cell(row) if row["reached"] else row["note"]), flush=True)

    best = []
    for name in VOLUMES:
        print(f"\n## {name}\n")
        mine = [r for r in rows if r["volume"] == name]
        printable = [
            {
                **r,
                "psnr_text": f"{r['psnr']:.2f}" if r["reached"] else "not reached",
                "ssim_text": f"{r['ssim']:.4f}" if r["reached"] else "",
                "ratio_text": f"{r['ratio']:.0f}" if r["reached"] else "",
                "enc": f"{r['encode_seconds']:.2f}" if r["reached"] else "",
                "dec": f"{r['decode_seconds']:.2f}" if r["reached"] else "",
            }
            for r in mine
        ]
        print(
            table(
                printable,
                [
                    ("target", "target", "g"),
                    ("codec", "codec", ""),
                    ("PSNR dB", "psnr_text", ""),
                    ("SSIM", "ssim_text", ""),
                    ("ratio", "ratio_text", ""),
                    ("encode s", "enc", ""),
                    ("decode s", "dec", ""),
                    ("search s", "search_seconds", ".1f"),
                    ("setting", "setting", ""),
                ],
            )
        )
        for ratio in args.ratios:
            reached = [r for r in mine if r["target"] == ratio and r["reached"]]
            if reached:
                top = max(reached, key=lambda r: r["psnr"])
                best.append({"volume": name, "target": ratio, "codec": top["codec"], "psnr": top["psnr"]})
    print("\n## Best classical codec by PSNR\n")
    print(
        table(
            best,
            [("volume", "volume", ""), ("target", "target", "g"), ("codec", "codec", ""), ("PSNR dB", "psnr", ".2f")],
        )
    )
    path = save(
        "classical_strongest",
        {
            "threads": cpu_cores(),
            "settings": {
                "AV1": f"libaom-av1 via ffmpeg, crf (integer 0..63) with -b:v 0, -cpu-used {classical.AV1_CPU_USED}, "
                "-row-mt 1, -threads = cores; OBU stream less temporal delimiters",
                "SPERR": "imagecodecs.sperr_encode, mode bpp, the whole volume as one chunk, float64 stored values",
            },
            "skipped": skipped,
            "rows": rows,
            "best": best,
        },
    )
    print(f"\nwrote {path}")


def _cell(row: dict) -> str:
    return (
        f"{row['ratio']:.0f}x, PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.4f}, "
        f"encode {row['encode_seconds']:.2f} s, decode {row['decode_seconds']:.2f} s, "
        f"search {row['search_seconds']:.0f} s, {row['setting']}"
    )


if __name__ == "__main__":
    main()
