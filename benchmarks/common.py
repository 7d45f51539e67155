"""Shared pieces of the benchmarks: the brain template, one timed compression, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from codec import pipeline
from codec.format import moecfile
from codec.io.files import atomic_write_bytes
from codec.io.load import load_volume
from codec.io.volume import Volume
from codec.settings import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
BRAIN = ROOT.parent / "shared" / "data" / "brain_template_mni152_1mm.nii.gz"
CT = ROOT.parent / "shared" / "data" / "chest_ct_lung2.nii.gz"  # the development chest CT
RESULTS = Path(__file__).resolve().parent / "results"


def brain() -> Volume:
    if not BRAIN.exists():
        raise SystemExit(f"the brain template is not at {BRAIN}")
    return load_volume(BRAIN)


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }


def compress(volume: Volume, settings: pipeline.Settings, config: TrainConfig) -> dict:
    """Train, write the bytes, decode them, measure: one row of a benchmark table."""
    start = time.perf_counter()
    compression = pipeline.Compression(volume, settings, config)
    made = compression.train().encode()
    data = made.data
    seconds = time.perf_counter() - start
    evaluation = compression.evaluate(moecfile.from_bytes(data))
    params = compression.plan.model.parameter_count()
    return {
        "settings": asdict(settings),
        "minutes": config.minutes,
        "steps": made.steps,
        "bytes": len(data),
        "ratio": evaluation.ratio,
        "psnr": evaluation.quality.psnr,
        "ssim": evaluation.quality.ssim,
        "parameters": params,
        "bits_per_weight": 8 * len(data) / params,
        "seconds": seconds,
        "experts_used": sum(1 for e in evaluation.experts if e.share > 0),
    }


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: columns are (title, key, format)."""
    lines = ["| " + " | ".join(t for t, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(row[k], f) if f else str(row[k]) for _, k, f in columns) + " |")
    return "\n".join(lines)


class Cells:
    """Finished rows of a long benchmark, kept on disk so that a rerun skips them."""

    def __init__(self, name: str) -> None:
        self.path = RESULTS / f"{name}.cells.json"
        self.done: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, measure) -> dict:
        if key not in self.done:
            self.done[key] = measure()
            RESULTS.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self.done, indent=2, default=str).encode())
        return self.done[key]


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_bytes(path, json.dumps({"machine": machine(), **payload}, indent=2, default=str).encode())
    return path
