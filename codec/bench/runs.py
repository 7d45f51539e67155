"""`moec bench`: rate-distortion of MoEC against the classical codecs on a user's own volume.

Every cell (one method at one ratio) is measured the same way (docs/design.md, "Measures": ratio on the bytes
actually produced, PSNR with peak = max - min, 3D SSIM), written to its own JSON file as soon as it
is done, and skipped on a rerun, so a long benchmark survives interruption. The tables and the plot
are regenerated from the cells at the end of every cell.

Methods: the learned MoEC partition, a single SIREN and the fixed block partition at the same file
size and training time (MoEC's claim: the learned partition beats fixed blocks, which beat one
SIREN), the classical codecs, and, at one ratio, the ablations (number of experts, top-2,
balancing loss off, router pretraining off).

Rows: every row of methods.CLAIM, or (`rows="verdict"`) only those the verdicts read: the claim's
three, the control and the default, a third of the time on several volumes.

Volumes: `run_volumes` runs the same benchmark on each of several volumes, each in its own folder,
and writes one report with a table per volume.

Seeds: the rows the verdict reads (the claim's three and the control) can run with several seeds,
each seed its own cell; the tables show their mean and say how many, and the verdict says whether
the order holds on every seed, not only on the means.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from codec import pipeline
from codec.bench import classical
from codec.bench.methods import ABLATIONS, CLAIM, SEEDED, Method
from codec.bench.report import volumes_markdown, write_reports
from codec.errors import RatioError
from codec.format import moecfile
from codec.io.files import atomic_write_bytes
from codec.io.volume import Volume
from codec.settings import ABLATION_RATIO, BENCH_RATIOS, BENCH_ROWS, TrainConfig


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell_path(out: Path, method: str, ratio: float, seed: int = 0) -> Path:
    """Seed 0 keeps the name cells had before seeds were recorded (every one of those ran seed 0)."""
    return out / "cells" / (f"{slug(method)}@{ratio:g}" + (f"@seed{seed}" if seed else "") + ".json")


def run_moec(volume: Volume, method: Method, ratio: float, config: TrainConfig) -> dict:
    settings = pipeline.Settings(ratio=ratio, **method.settings)
    config = TrainConfig(**{**asdict(config), **method.train})
    start = time.perf_counter()
    try:
        session = pipeline.Compression(volume, settings, config)
    except RatioError as exc:
        return {"reached": False, "note": str(exc)}
    made = session.train().encode()
    data = made.data
    decoded = moecfile.from_bytes(data)
    evaluation = session.evaluate(decoded)
    return {
        "reached": True,
        "seed": config.seed,
        "format": decoded.meta.version,
        "ratio": evaluation.ratio,
        "bytes": len(data),
        "psnr": evaluation.quality.psnr,
        "ssim": evaluation.quality.ssim,
        "steps": made.steps,
        "parameters": session.plan.model.parameter_count(),
        "experts_used": sum(1 for e in evaluation.experts if e.share > 0),
        "seconds": time.perf_counter() - start,
        "note": "",
    }


def run_classical(volume: Volume, codec: str, ratio: float) -> dict:
    start = time.perf_counter()
    result = classical.codec_named(codec).compress(volume, ratio)
    row = asdict(result)
    row.pop("codec", None)
    row.pop("target", None)
    row["seconds"] = time.perf_counter() - start
    return row


@dataclass(frozen=True)
class Cell:
    """One measurement of the benchmark: a method at a ratio (and seed), run on demand."""

    method: str
    ratio: float
    kind: str  # "moec", "classical", "ablation"
    run: Callable[[], dict]
    seed: int = 0


def plan_cells(
    volume: Volume,
    ratios: tuple[float, ...],
    config: TrainConfig,
    codecs: tuple[str, ...],
    ablations: bool,
    ablation_ratio: float,
    moec: bool = True,
    seeds: int = 1,
    rows: str = "all",
) -> Iterator[Cell]:
    """Every cell of the run, in order: per ratio the classical codecs, then the MoEC rows (the
    SEEDED ones with seeds config.seed .. config.seed + seeds - 1, the rest with config.seed); last
    the ablations, each with every seed (they are read against the default's mean)."""
    if rows not in BENCH_ROWS:
        raise ValueError(f"rows must be one of {BENCH_ROWS}, not {rows!r}")
    methods = CLAIM if rows == "all" else tuple(m for m in CLAIM if m.name in SEEDED)
    for ratio in ratios:
        for codec in codecs:
            yield Cell(codec, ratio, "classical", partial(run_classical, volume, codec, ratio))
        for method in methods if moec else ():
            for seed in range(config.seed, config.seed + (seeds if method.name in SEEDED else 1)):
                seeded = replace(config, seed=seed)
                yield Cell(method.name, ratio, "moec", partial(run_moec, volume, method, ratio, seeded), seed)
    if ablations:
        # Seed by seed, so that an interrupted run leaves whole seeds of the ablation table.
        for seed in range(config.seed, config.seed + seeds):
            seeded = replace(config, seed=seed)
            for method in ABLATIONS:
                yield Cell(
                    method.name,
                    ablation_ratio,
                    "ablation",
                    partial(run_moec, volume, method, ablation_ratio, seeded),
                    seed,
                )


def run(
    volume: Volume,
    out: Path,
    ratios: tuple[float, ...] = BENCH_RATIOS,
    config: TrainConfig = TrainConfig(),
    codecs: tuple[str, ...] | None = None,
    ablations: bool = False,
    ablation_ratio: float = ABLATION_RATIO,
    moec: bool = True,
    seeds: int = 1,
    rows: str = "all",
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) the benchmark into `out`; returns the collected results."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    available = classical.availability()
    if codecs is None:
        codecs = tuple(c.name for c in classical.CLASSICAL)
    for codec, reason in available.items():
        if codec in codecs and reason:
            log(f"skipping {codec}: {reason}")
    usable = tuple(c for c in codecs if not available.get(c))
    describe = {
        "shape": list(volume.shape),
        "dtype": volume.stored_dtype.name,
        "raw_bytes": volume.raw_bytes,
        "spacing": [float(s) for s in volume.spacing],
        "minutes": config.minutes,
        "steps": config.steps,
        "source": str(volume.source or ""),
    }
    cells = list(plan_cells(volume, ratios, config, usable, ablations, ablation_ratio, moec, seeds, rows))
    for number, cell in enumerate(cells, 1):
        path = cell_path(out, cell.method, cell.ratio, cell.seed)  # a classical cell's seed is 0
        name = f"[{number}/{len(cells)}] {cell.method} @ {cell.ratio:g}x" + (
            f", seed {cell.seed}" if cell.kind != "classical" else ""
        )
        if path.exists():
            log(f"{name}: done before, skipped")
            continue
        log(f"{name} ...")
        row = {"method": cell.method, "target": cell.ratio, "kind": cell.kind, **cell.run()}
        atomic_write_bytes(path, json.dumps(row, indent=1, default=float).encode())
        log("    " + _summary(row))
        write_reports(out, describe, ratios, skipped={c: r for c, r in available.items() if r and c in codecs})
    return write_reports(out, describe, ratios, skipped={c: r for c, r in available.items() if r and c in codecs})


def run_volumes(
    volumes: list[tuple[str, Callable[[], Volume]]], out: Path, log: Callable[[str], None] = print, **options: Any
) -> dict[str, dict]:
    """`run` on each (name, loader) of `volumes` into out/NAME (a volume is loaded when its turn
    comes, so one at a time is in memory), then out/results.md with one section per volume;
    returns each volume's results by name. `options` are `run`'s."""
    names = [name for name, _ in volumes]
    if len(set(names)) != len(names):
        raise ValueError(f"two volumes have the same name: {names}")
    results = {}
    for number, (name, load) in enumerate(volumes, 1):
        log(f"volume {number}/{len(volumes)}: {name}")
        results[name] = run(load(), out / name, log=log, **options)
        # After every volume, so an interrupted run still has the report of those done.
        atomic_write_bytes(out / "results.md", volumes_markdown(out, names).encode())
    return results


def _summary(row: dict) -> str:
    if not row.get("reached"):
        return f"not reached: {row.get('note', '')}"
    text = f"{row['ratio']:.1f}x, PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}"
    if row.get("encode_seconds") is not None:
        text += f", encode {row['encode_seconds']:.2f} s, decode {row['decode_seconds']:.2f} s"
    return text


def describe_missing() -> list[str]:
    """What the bench extra would add here, for a clear message."""
    missing = []
    for codec, reason in classical.availability().items():
        if reason:
            missing.append(f"{codec}: {reason}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib (no plot): pip install 'moec-napari[bench]'")
    return missing
