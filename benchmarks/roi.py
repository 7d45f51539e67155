"""ROI-weighted fidelity on the development CT: the same ratio and training time with and without a
lesion-sized region of interest (a 15 mm radius ball at the volume's centre, about where the
mediastinum is), PSNR and max error inside and outside it. Prints a table and writes
benchmarks/results/roi.json.

    python benchmarks/roi.py [--volume CT.nii.gz] [--ratio 1024] [--minutes 1 | --steps S] [--seeds 3]
                             [--weight 10 100]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from common import CT, machine, save, table

from codec import pipeline
from codec.format import moecfile
from codec.io.load import load_volume
from codec.settings import TrainConfig

RADIUS_MM = 15.0


def ball(volume, radius_mm: float) -> np.ndarray:
    """A ball of `radius_mm` (world millimetres, the affine's spacing) at the volume's centre."""
    spacing = np.linalg.norm(np.asarray(volume.affine)[:3, :3], axis=0)
    grids = np.ogrid[tuple(slice(0, n) for n in volume.shape[:3])]
    centre = [(n - 1) / 2 for n in volume.shape[:3]]
    distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return distance <= radius_mm**2


def run(
    volume,
    ratio: float,
    minutes: float,
    steps: int | None,
    seed: int,
    roi: np.ndarray | None,
    weight: float,
    mask: np.ndarray,
):
    config = TrainConfig(minutes=minutes, steps=steps, seed=seed, roi_weight=weight)
    made = pipeline.Compression(volume, pipeline.Settings(ratio=ratio), config, roi).train().encode()
    data = made.data
    evaluation = pipeline.evaluate(volume, moecfile.from_bytes(data), roi=mask)
    r = evaluation.roi
    return {
        "weight": weight if roi is not None else 1.0,
        "seed": seed,
        "bytes": len(data),
        "ratio": evaluation.ratio,
        "psnr": evaluation.quality.psnr,
        "psnr_inside": r.psnr_inside,
        "psnr_outside": r.psnr_outside,
        "max_inside": r.max_inside,
        "max_outside": r.max_outside,
        "steps": made.steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", default=str(CT))
    parser.add_argument("--ratio", type=float, default=1024.0)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--steps", type=int, help="a step budget instead of minutes (reproducible)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--weight", type=float, nargs="+", default=[10.0, 100.0])
    args = parser.parse_args()
    torch.set_num_threads(2)
    volume = load_volume(args.volume)
    mask = ball(volume, RADIUS_MM)
    print(
        f"ROI: a {RADIUS_MM:g} mm ball, {int(mask.sum()):,} voxels ({100 * mask.mean():.3f}%), weights "
        f"{' '.join(f'{w:g}' for w in args.weight)}"
    )
    rows = []
    for seed in range(args.seeds):
        for weight in (1.0, *args.weight):
            roi = None if weight == 1.0 else mask
            rows.append(run(volume, args.ratio, args.minutes, args.steps, seed, roi, weight, mask))
            print(
                f"  seed {seed}, weight {weight:g}: inside {rows[-1]['psnr_inside']:.2f} dB, outside "
                f"{rows[-1]['psnr_outside']:.2f} dB",
                flush=True,
            )
    summary = []
    for weight in (1.0, *args.weight):
        picked = [r for r in rows if r["weight"] == weight]
        inside = [r["psnr_inside"] for r in picked]
        summary.append(
            {
                "mode": "without ROI" if weight == 1.0 else f"ROI weight {weight:g}",
                "range": f"{min(inside):.2f} .. {max(inside):.2f}",
                **{
                    k: statistics.fmean(r[k] for r in picked)
                    for k in ("ratio", "psnr", "psnr_inside", "psnr_outside", "max_inside", "max_outside")
                },
            }
        )
    print(
        table(
            summary,
            [
                ("mode", "mode", ""),
                ("ratio", "ratio", ".1f"),
                ("PSNR (dB)", "psnr", ".2f"),
                ("inside ROI (dB)", "psnr_inside", ".2f"),
                ("inside, seeds", "range", ""),
                ("outside (dB)", "psnr_outside", ".2f"),
                ("max error inside", "max_inside", ".0f"),
                ("max error outside", "max_outside", ".0f"),
            ],
        )
    )
    for row in summary[1:]:
        print(
            f"\n{row['mode']}: ROI PSNR {row['psnr_inside'] - summary[0]['psnr_inside']:+.2f} dB, whole volume "
            f"{row['psnr'] - summary[0]['psnr']:+.2f} dB (means of {args.seeds} seeds)"
        )
    out = save(
        "roi",
        {
            "machine": machine(),
            "volume": args.volume,
            "ratio": args.ratio,
            "minutes": args.minutes,
            "steps": args.steps,
            "roi_voxels": int(mask.sum()),
            "radius_mm": RADIUS_MM,
            "weights": args.weight,
            "rows": rows,
            "summary": summary,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
