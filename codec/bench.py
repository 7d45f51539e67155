"""`moec bench`: rate-distortion of MoEC against the classical codecs on a user's own volume.

Every cell (one method at one ratio) is measured the same way (DESIGN section 5: ratio on the bytes
actually produced, PSNR with peak = max - min, 3D SSIM), written to its own JSON file as soon as it
is done, and skipped on a rerun, so a long benchmark survives interruption. The tables and the plot
are regenerated from the cells at the end of every cell.

Methods: the learned MoEC partition, a single SIREN and the fixed block partition at the same file
size and training time (the paper's central claim), the classical codecs, and, at one ratio, the
ablations (number of experts, top-2, balancing loss off, router pretraining off).

Seeds: the rows the verdict reads (the claim's three and the control) can run with several seeds,
each seed its own cell; the tables show their mean and say how many, and the verdict says whether
the order holds on every seed, not only on the means.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from . import classical, pack, pipeline
from .bitstream import VERSION
from .errors import BudgetError
from .files import atomic_write_bytes
from .train import TrainConfig
from .volume import Volume

DEFAULT_RATIOS = (128.0, 256.0, 512.0, 1024.0, 4096.0)
#: The first format whose header is deflated against the preset dictionary (bitstream).
SMALL_HEADER_VERSION = 5


@dataclass(frozen=True)
class Method:
    """One MoEC configuration benchmarked (the baselines are options of the same code)."""

    name: str
    settings: dict = field(default_factory=dict)  # pipeline.Settings fields besides the ratio
    train: dict = field(default_factory=dict)  # TrainConfig fields besides the budget


# Every method spells out the settings it measured, so a cached cell keeps meaning what it
# measured when a default changes.
_DEFAULT = {"encoder": "grid", "experts": 4, "grid_channels": 1, "latent_bits": 1.5}
_RATE = {"latent_l1": 3e-3, "latent_tv": 1e-2}  # the default: sparse, smooth latents
_SPARSE = {"latent_l1": 3e-3, "latent_tv": 0.0}  # an earlier default: sparse, no smoothness penalty
# An earlier default still (2 bits per latent, no rate penalty at all), a context row of the bench.
_STOP13 = {**_DEFAULT, "latent_bits": 2.0}
_DENSE = {"latent_l1": 0.0, "latent_tv": 0.0}
CLAIM = (
    Method("MoEC default (latent grid, 4 experts, 1 channel)", _DEFAULT, _RATE),
    Method("single SIREN", {"experts": 1, "encoder": "siren"}),
    Method("blocks (8, fixed)", {"partition": "blocks", "encoder": "siren", "experts": 8}),
    # The control that isolates the partition: the default's encoder with one MLP and no router.
    Method("control: one MLP on the grid, no partition", {**_DEFAULT, "experts": 1}, _RATE),
    Method("MoEC, SIREN encoder, 8 experts", {"encoder": "siren", "experts": 8}),
    Method("MoEC default, router on the coordinates", {**_DEFAULT, "router_features": False}, _RATE),
    Method("MoEC stop 14 default (sparse latents, no smoothness penalty)", _DEFAULT, _SPARSE),
    Method("MoEC stop 13 default (2 bits per latent, no sparsity penalty)", _STOP13, _DENSE),
)
#: The paper's central claim (DESIGN section 6): at equal size and time, this order from best down.
CLAIM_ORDER = (CLAIM[0].name, CLAIM[2].name, CLAIM[1].name)
CLAIM_SHORT = {CLAIM[0].name: "learned", CLAIM[2].name: "blocks", CLAIM[1].name: "single SIREN"}
CONTROL = CLAIM[3].name
#: The rows `--seeds` repeats: those the verdict reads. The others are context, one seed each.
SEEDED = (*CLAIM_ORDER, CONTROL)
# Around the default, at one ratio (one expert and the router on the coordinates are claim rows above).
ABLATIONS = (
    Method("grid: experts 2", {**_DEFAULT, "experts": 2}, _RATE),
    Method("grid: experts 8", {**_DEFAULT, "experts": 8}, _RATE),
    Method("grid: experts 16", {**_DEFAULT, "experts": 16}, _RATE),
    Method("grid: top-2", {**_DEFAULT, "top_k": 2}, _RATE),
    Method("grid: balancing off", _DEFAULT, train={**_RATE, "balance_weight": 0.0}),
    Method("grid: router pretraining off", _DEFAULT, train={**_RATE, "router_pretraining": False}),
    Method("grid: pretraining on blocks", _DEFAULT, train={**_RATE, "pretrain_target": "blocks"}),
)


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
    except BudgetError as exc:
        return {"reached": False, "note": str(exc)}
    made = session.train().encode()
    data = made.data
    decoded = pack.decode(data)
    evaluation = session.evaluate(decoded)
    return {"reached": True, "seed": config.seed, "format": decoded.meta.version, "ratio": evaluation.ratio,
            "bytes": len(data),
            "psnr": evaluation.quality.psnr,
            "ssim": evaluation.quality.ssim, "steps": made.steps, "parameters": session.plan.model.parameter_count(),
            "experts_used": sum(1 for e in evaluation.experts if e.share > 0),
            "seconds": time.perf_counter() - start, "note": ""}


def run_classical(volume: Volume, codec: str, ratio: float) -> dict:
    start = time.perf_counter()
    result = classical.compress(volume, codec, ratio)
    row = asdict(result)
    row.pop("codec", None)
    row.pop("target", None)
    row["seconds"] = time.perf_counter() - start
    return row


@dataclass(frozen=True)
class Cell:
    method: str
    ratio: float
    kind: str  # "moec", "classical", "ablation"
    run: Callable[[], dict]
    seed: int = 0


def plan_cells(volume: Volume, ratios: tuple[float, ...], config: TrainConfig, codecs: tuple[str, ...],
               ablations: bool, ablation_ratio: float, moec: bool = True, seeds: int = 1) -> Iterator[Cell]:
    """Every cell of the run, in order: per ratio the classical codecs, then the MoEC rows (the
    SEEDED ones with seeds config.seed .. config.seed + seeds - 1, the rest with config.seed); last
    the ablations, each with every seed (they are read against the default's mean)."""
    for ratio in ratios:
        for codec in codecs:
            yield Cell(codec, ratio, "classical", partial(run_classical, volume, codec, ratio))
        for method in CLAIM if moec else ():
            for seed in range(config.seed, config.seed + (seeds if method.name in SEEDED else 1)):
                seeded = replace(config, seed=seed)
                yield Cell(method.name, ratio, "moec", partial(run_moec, volume, method, ratio, seeded), seed)
    if ablations:
        # Seed by seed, so that an interrupted run leaves whole seeds of the ablation table.
        for seed in range(config.seed, config.seed + seeds):
            seeded = replace(config, seed=seed)
            for method in ABLATIONS:
                yield Cell(method.name, ablation_ratio, "ablation",
                           partial(run_moec, volume, method, ablation_ratio, seeded), seed)


def run(volume: Volume, out: Path, ratios: tuple[float, ...] = DEFAULT_RATIOS, config: TrainConfig = TrainConfig(),
        codecs: tuple[str, ...] | None = None, ablations: bool = False, ablation_ratio: float = 256.0,
        moec: bool = True, seeds: int = 1, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the benchmark into `out`; returns the collected results."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(exist_ok=True)
    available = classical.availability()
    if codecs is None:
        codecs = tuple(classical.CODECS)
    for codec, reason in available.items():
        if codec in codecs and reason:
            log(f"skipping {codec}: {reason}")
    usable = tuple(c for c in codecs if not available.get(c))
    describe = {"shape": list(volume.shape), "dtype": volume.dtype.name, "raw_bytes": volume.raw_bytes,
                "minutes": config.minutes, "steps": config.steps, "source": str(volume.source or "")}
    cells = list(plan_cells(volume, ratios, config, usable, ablations, ablation_ratio, moec, seeds))
    for number, cell in enumerate(cells, 1):
        path = cell_path(out, cell.method, cell.ratio, cell.seed)  # a classical cell's seed is 0
        name = (f"[{number}/{len(cells)}] {cell.method} @ {cell.ratio:g}x"
                + (f", seed {cell.seed}" if cell.kind != "classical" else ""))
        if path.exists():
            log(f"{name}: done before, skipped")
            continue
        log(f"{name} ...")
        row = {"method": cell.method, "target": cell.ratio, "kind": cell.kind, **cell.run()}
        atomic_write_bytes(path, json.dumps(row, indent=1, default=float).encode())
        log("    " + _summary(row))
        write_reports(out, describe, ratios, skipped={c: r for c, r in available.items() if r and c in codecs})
    return write_reports(out, describe, ratios, skipped={c: r for c, r in available.items() if r and c in codecs})


def _summary(row: dict) -> str:
    if not row.get("reached"):
        return f"not reached: {row.get('note', '')}"
    return f"{row['ratio']:.1f}x, PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}"


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per method and ratio: a single cell as it is, several seeds' cells as their means
    (PSNR, SSIM, ratio, steps), with `psnrs` (by seed) and `seeds` beside. A cell without a seed ran
    seed 0 (cells cached before seeds were recorded)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["target"]), []).append(row)
    merged = []
    for group in groups.values():
        group.sort(key=lambda r: r.get("seed", 0))
        reached = [r for r in group if r.get("reached")]
        if not reached:
            merged.append(group[0])
            continue
        row = dict(reached[0])
        for key in ("psnr", "ssim", "ratio"):
            row[key] = sum(r[key] for r in reached) / len(reached)
        if all("steps" in r for r in reached):
            row["steps"] = round(sum(r["steps"] for r in reached) / len(reached))
        row["seeds"] = [r.get("seed", 0) for r in reached]
        row["psnrs"] = [r["psnr"] for r in reached]
        merged.append(row)
    return merged


def write_reports(out: Path, describe: dict, ratios: tuple[float, ...], skipped: dict) -> dict:
    rows = load_cells(out)
    results = {"volume": describe, "skipped": skipped, "cells": rows, "means": aggregate(rows)}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=float).encode())
    atomic_write_bytes(out / "results.md", markdown(rows, describe, skipped).encode())
    try:
        plot(rows, out / "rd.png", describe)
    except ImportError:
        results["plot"] = "matplotlib is not installed (pip install 'moec-napari[bench]'): no plot"
    return results


def _cell_text(row: dict | None, measure: str = "psnr") -> str:
    if row is None:
        return ""
    if not row.get("reached"):
        return "cannot reach"
    value = row[measure]
    text = (f"{value:.2f}" if measure == "psnr" else f"{value:.3f}") if math.isfinite(value) else str(value)
    return text + (f" ({len(row['psnrs'])})" if len(row.get("psnrs", ())) > 1 else "")


def markdown(cells: list[dict], describe: dict, skipped: dict) -> str:
    budget = (f"{describe['minutes']:g} min of training" if describe.get("steps") is None
              else f"{describe['steps']} steps")
    rows = aggregate(cells)
    ratios = sorted({r["target"] for r in rows if r["kind"] != "ablation"})
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] != "ablation"))
    by_key = {(r["method"], r["target"]): r for r in rows}
    # The seeds table in the order of the tables above: by method, then by ratio.
    seeded = sorted((r for r in rows if len(r.get("psnrs", ())) > 1),
                    key=lambda r: (methods.index(r["method"]) if r["method"] in methods else len(methods), r["target"]))
    trained = f", MoEC with {budget} per cell" if any(r["kind"] != "classical" for r in rows) else ""
    lines = [f"Volume {' x '.join(map(str, describe['shape']))} {describe['dtype']}{trained}. "
             "PSNR in dB (peak = max - min); ratio measured on the bytes produced."
             + (" A figure followed by (n) is the mean of n seeds (each seed: the table \"Seeds\" below)."
                if seeded else ""), ""]
    for measure in ("psnr", "ssim"):
        if measure == "ssim":
            lines += ["", "SSIM (3D, same cells):", ""]
        lines.append("| method | " + " | ".join(f"{r:g}x" for r in ratios) + " |")
        lines.append("|---|" + "---|" * len(ratios))
        for method in methods:
            row_text = " | ".join(_cell_text(by_key.get((method, r)), measure) for r in ratios)
            lines.append(f"| {method} | {row_text} |")
    lines += verdict_lines(rows, ratios)
    if seeded:
        lines += ["", "Seeds (PSNR dB of each seed's cell, the same budget):", "",
                  "| method | ratio | seeds | PSNR by seed | mean | spread |", "|---|---|---|---|---|---|"]
        for r in seeded:
            lines.append(f"| {r['method']} | {r['target']:g}x | {', '.join(map(str, r['seeds']))} | "
                         f"{' / '.join(f'{p:.2f}' for p in r['psnrs'])} | {r['psnr']:.2f} | "
                         f"{max(r['psnrs']) - min(r['psnrs']):.2f} |")
    ablations = [r for r in rows if r["kind"] == "ablation"]
    if ablations:
        ratio = ablations[0]["target"]
        base = {r["method"]: r for r in rows if r["target"] == ratio and r["kind"] == "moec"}
        default = base.get(CLAIM[0].name)
        lines += ["", f"Ablations at {ratio:g}x (same file size, same training time; against the default: the "
                  "difference of the means in dB, and on how many seeds, paired, the row is ahead):", "",
                  "| variant | ratio | PSNR dB | SSIM | steps | experts used | against the default |",
                  "|---|---|---|---|---|---|---|"]
        # As the run plans them: the default first, then the claim and context rows, then the ablations.
        plan = {m.name: i for i, m in enumerate(CLAIM + ABLATIONS)}
        ordered = sorted([*base.values(), *ablations], key=lambda r: plan.get(r["method"], len(plan)))
        for r in ordered:
            if r.get("reached"):
                versus = "" if r is default else _versus(r, default)
                lines.append(f"| {r['method']} | {r['ratio']:.1f} | {_cell_text(r)} | {_cell_text(r, 'ssim')} | "
                             f"{r['steps']} | {r.get('experts_used', '')} | {versus} |")
    older = list(dict.fromkeys(r["method"] for r in cells if r.get("reached") and r["kind"] != "classical"
                               and r.get("format", 4) < SMALL_HEADER_VERSION))
    if older:
        # Cached cells keep the file format they were measured with; a header before version 5 is
        # larger (version 4: ~370 bytes more on the brain template, which matters from ~1024x up).
        lines += ["", f"Measured with a .moec format before version {SMALL_HEADER_VERSION} (a larger header) "
                  f"than this program's version {VERSION}: " + "; ".join(older) + "."]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{c} ({why})" for c, why in skipped.items())]
    return "\n".join(lines) + "\n"


def _every_seed(cells: list[dict]) -> str:
    """Whether the learned partition's worst seed is above the best seed of each other claim row."""
    runs = [c["psnrs"] for c in cells]
    if all(len(r) == 1 for r in runs):
        return "one seed"
    return "yes" if all(min(runs[0]) > max(r) for r in runs[1:]) else "no"


def _versus(ours: dict, other: dict | None) -> str:
    """`ours` minus `other` (means), and on how many seeds, paired by seed, `ours` is ahead."""
    if not (other and other.get("reached")):
        return ""
    text = f"{ours['psnr'] - other['psnr']:+.2f}"
    pairs = dict(zip(other["seeds"], other["psnrs"]))
    ahead = [p > pairs[s] for s, p in zip(ours["seeds"], ours["psnrs"]) if s in pairs]
    return text + (f" (ahead on {sum(ahead)} of {len(ahead)} seeds)" if len(ahead) > 1 else "")


def verdict_lines(rows: list[dict], ratios: list[float]) -> list[str]:
    """Where the central claim holds and where the default beats the classical codecs, ratio by
    ratio, read off `aggregate`'s rows (means over seeds; a method that could not reach a ratio is
    out of that ratio's order)."""
    by_key = {(r["method"], r["target"]): r for r in rows if r["kind"] != "ablation"}
    default = CLAIM[0].name
    lines: list[str] = []
    claim = []
    for ratio in ratios:
        found = [by_key.get((m, ratio)) for m in CLAIM_ORDER]
        cells = [c for c in found if c and c.get("reached")]
        if len(cells) < len(found):
            continue
        ranked = sorted(cells, key=lambda c: -c["psnr"])
        order = " > ".join(f"{CLAIM_SHORT[c['method']]} {c['psnr']:.2f}" for c in ranked)
        first = ranked[0]["method"] == CLAIM_ORDER[0]
        holds = [c["method"] for c in ranked] == list(CLAIM_ORDER)
        partition = _versus(cells[0], by_key.get((CONTROL, ratio)))
        claim.append(f"| {ratio:g}x | {order} | {'yes' if first else 'no'} | {_every_seed(cells)} | "
                     f"{'yes' if holds else 'no'} | {partition} |")
    if claim:
        lines += ["", "The central claim at equal size and time, by PSNR: the learned partition above the blocks and "
                  "the single SIREN (DESIGN; on the means, then on every seed: its worst seed above their best), "
                  "and the whole order learned > blocks > single SIREN (the issue); last, what the partition itself "
                  "adds: the default against one MLP on the same grid (dB):",
                  "", "| ratio | order | learned above both | on every seed | whole order | partition vs one MLP |",
                  "|---|---|---|---|---|---|", *claim]
    against = []
    for ratio in ratios:
        ours = by_key.get((default, ratio))
        rivals = [r for r in rows if r["kind"] == "classical" and r["target"] == ratio and r.get("reached")]
        if not (ours and ours.get("reached") and rivals):
            continue
        best = max(rivals, key=lambda r: r["psnr"])
        against.append(f"| {ratio:g}x | {ours['psnr']:.2f} | {best['method']} {best['psnr']:.2f} | "
                       f"{ours['psnr'] - best['psnr']:+.2f} |")
    if against:
        lines += ["", "The default against the best classical codec that reaches the ratio:", "",
                  "| ratio | MoEC default | best classical | difference dB |", "|---|---|---|---|", *against]
    return lines


def plot(rows: list[dict], path: Path, describe: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(rows)
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=120)
    # Twenty colours: the default ten repeat from the eleventh method on (two curves alike).
    tab20 = plt.get_cmap("tab20").colors
    axes.set_prop_cycle(color=list(tab20[::2] + tab20[1::2]))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] != "ablation"))
    for method in methods:
        points = sorted((r["ratio"], r["psnr"]) for r in rows
                        if r["method"] == method and r["kind"] != "ablation" and r.get("reached"))
        if points:
            style = "-o" if any(r["kind"] == "moec" and r["method"] == method for r in rows) else "--s"
            axes.plot(*zip(*points), style, label=method)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("compression ratio (raw voxels / file bytes)")
    axes.set_ylabel("PSNR (dB, peak = max - min)")
    axes.set_title(f"{' x '.join(map(str, describe['shape']))} {describe['dtype']}")
    axes.grid(True, which="both", alpha=0.3)
    if axes.lines:
        # Beside the axes: with ten methods a legend inside hides the curves it names.
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    tmp = path.with_name(path.name + ".part.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)


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

