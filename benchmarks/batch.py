"""A cohort's throughput: `moec batch` on its local dask cluster against `moec compress` run once per
volume, one after another, on the same volumes with the same settings. Prints a table and writes
benchmarks/results/batch.json.

The cohort is COPIES copies of the development CT (512 x 512 x 61 int16, HU), half of them as
NIfTI files and half as DICOM series (written here, slice by slice, with pydicom), each copy its
own file or series. Both ways train every volume for --minutes; the batch runs a worker process of
one torch thread per core, the sequential runs give each `moec compress` every core (--threads).

    python benchmarks/batch.py [--volume CT.nii.gz] [--copies 8] [--ratio 1024] [--minutes 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import CT, ROOT, save, table

from codec.io.load import load_volume
from codec.io.volume import to_stored

WORK = ROOT / "benchmarks" / "results" / "tmp" / "batch"
MOEC = str(Path(sys.executable).with_name("moec"))


def write_series(volume, folder: Path, series_uid: str, number: int) -> None:
    """The volume as a CT series of single-frame slices (its affine's axes as columns, rows and
    slices; LPS), under one made-up patient and study."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    stored = to_stored(volume.data, volume.stored_dtype, volume.slope, volume.inter)
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "BENCHMARK^CT", "BENCH-1", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.4242", series_uid
        ds.SeriesNumber, ds.InstanceNumber, ds.FrameOfReferenceUID = number, k + 1, "1.2.826.0.1.3680043.8.498.4243"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.r_[lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]]]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
        image = np.ascontiguousarray(stored[:, :, k].T)
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{volume.slope:g}", f"{volume.inter:g}"
        ds.PixelData = image.astype("<i2").tobytes()
        pydicom.dcmwrite(folder / f"IM{k + 1:04d}.dcm", ds, enforce_file_format=True)


def make_cohort(source: Path, copies: int, folder: Path) -> list[Path]:
    """COPIES inputs under `folder`: NIfTI copies and DICOM series, alternately."""
    if folder.exists():
        shutil.rmtree(folder)
    volume = load_volume(source)
    inputs = []
    for i in range(copies):
        if i % 2 == 0:
            path = folder / f"patient{i:02d}" / "ct.nii.gz"
            path.parent.mkdir(parents=True)
            shutil.copyfile(source, path)
        else:
            path = folder / f"patient{i:02d}" / "ct"
            write_series(volume, path, f"1.2.826.0.1.3680043.8.498.4242.{i}", i)
        inputs.append(path)
    return inputs


def sequential(inputs: list[Path], out: Path, ratio: float, minutes: float, threads: int) -> dict:
    out.mkdir(parents=True)
    rows, start = [], time.perf_counter()
    for i, path in enumerate(inputs):
        run = subprocess.run(
            [
                MOEC,
                "compress",
                str(path),
                "-o",
                str(out / f"{i:02d}.moec"),
                "--ratio",
                f"{ratio:g}",
                "--minutes",
                f"{minutes:g}",
                "--threads",
                str(threads),
                "--quiet",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        report = json.loads(run.stdout)
        rows.append({key: report[key] for key in ("ratio", "psnr", "ssim", "steps")})
        print(
            f"  sequential {i + 1}/{len(inputs)}: {report['ratio']:.1f}x, {report['psnr']:.2f} dB, "
            f"{report['steps']} steps",
            file=sys.stderr,
            flush=True,
        )
    return {"seconds": time.perf_counter() - start, "volumes": rows}


def batch(cohort: Path, out: Path, ratio: float, minutes: float) -> dict:
    start = time.perf_counter()
    run = subprocess.run(
        [MOEC, "batch", str(cohort), "-o", str(out), "--ratio", f"{ratio:g}", "--minutes", f"{minutes:g}", "--json"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"moec batch failed:\n{run.stderr}")
    engine = next((line for line in run.stderr.splitlines() if "to compress, on" in line), "")
    rows = [{"ratio": r["ratio"], "psnr": r["psnr"], "ssim": r["ssim"]} for r in json.loads(run.stdout)]
    return {"seconds": seconds, "volumes": rows, "engine": engine.split(", on ", 1)[-1]}


def summary(name: str, result: dict) -> dict:
    rows = result["volumes"]
    return {
        "mode": name,
        "volumes": len(rows),
        "minutes": result["seconds"] / 60,
        "per_hour": 3600 * len(rows) / result["seconds"],
        "ratio": statistics.fmean(r["ratio"] for r in rows),
        "psnr": statistics.fmean(r["psnr"] for r in rows),
        "ssim": statistics.fmean(r["ssim"] for r in rows),
        "worst_psnr": min(r["psnr"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", type=Path, default=CT)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=1024.0)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of each sequential `moec compress` (default: every core)",
    )
    args = parser.parse_args()
    if not args.volume.exists():
        raise SystemExit(f"no volume at {args.volume}")
    load_before = os.getloadavg()
    inputs = make_cohort(args.volume, args.copies, WORK / "cohort")
    for folder in (WORK / "sequential", WORK / "batch"):
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{args.copies} copies of {args.volume.name} ({len(inputs) // 2} DICOM series), {args.ratio:g}x, "
        f"{args.minutes:g} min each",
        file=sys.stderr,
        flush=True,
    )
    one_by_one = sequential(inputs, WORK / "sequential", args.ratio, args.minutes, args.threads)
    cohort = batch(WORK / "cohort", WORK / "batch", args.ratio, args.minutes)
    rows = [
        summary(f"moec compress x {args.copies}, one after another ({args.threads} threads)", one_by_one),
        summary(f"moec batch ({cohort['engine']})", cohort),
    ]
    speedup = rows[1]["per_hour"] / rows[0]["per_hour"]
    print(
        table(
            rows,
            [
                ("mode", "mode", ""),
                ("volumes", "volumes", "d"),
                ("minutes", "minutes", ".1f"),
                ("volumes per hour", "per_hour", ".1f"),
                ("mean ratio", "ratio", ".1f"),
                ("mean PSNR (dB)", "psnr", ".2f"),
                ("worst PSNR (dB)", "worst_psnr", ".2f"),
                ("mean SSIM", "ssim", ".4f"),
            ],
        )
    )
    print(f"\nthroughput of the batch: {speedup:.2f}x the sequential runs'")
    path = save(
        "batch",
        {
            "volume": str(args.volume),
            "copies": args.copies,
            "ratio": args.ratio,
            "minutes": args.minutes,
            "rows": rows,
            "speedup": speedup,
            "details": {"sequential": one_by_one, "batch": cohort},
            "load_average": {"before": load_before, "after": os.getloadavg()},
        },
    )
    print(f"wrote {path}")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
