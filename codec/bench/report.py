"""The bench's report, rewritten from its cells after each one: results.json, the Markdown tables
with the verdicts read off them (results.md), and the rate-distortion plot (rd.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from codec.bench.methods import ABLATIONS, CLAIM, CLAIM_ORDER, CLAIM_SHORT, CONTROL, DEFAULT
from codec.format.container import VERSION
from codec.io.files import atomic_write_bytes

#: The first format whose header is deflated against the preset dictionary (codec.format.container).
SMALL_HEADER_VERSION = 5


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
    budget = (
        f"{describe['minutes']:g} min of training" if describe.get("steps") is None else f"{describe['steps']} steps"
    )
    rows = aggregate(cells)
    ratios = sorted({r["target"] for r in rows if r["kind"] != "ablation"})
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] != "ablation"))
    by_key = {(r["method"], r["target"]): r for r in rows}
    # The seeds table in the order of the tables above: by method, then by ratio.
    seeded = sorted(
        (r for r in rows if len(r.get("psnrs", ())) > 1),
        key=lambda r: (methods.index(r["method"]) if r["method"] in methods else len(methods), r["target"]),
    )
    trained = f", MoEC with {budget} per cell" if any(r["kind"] != "classical" for r in rows) else ""
    lines = [
        f"Volume {' x '.join(map(str, describe['shape']))} {describe['dtype']}{trained}. "
        "PSNR in dB (peak = max - min); ratio measured on the bytes produced."
        + (' A figure followed by (n) is the mean of n seeds (each seed: the table "Seeds" below).' if seeded else ""),
        "",
    ]
    for measure in ("psnr", "ssim"):
        if measure == "ssim":
            lines += ["", "SSIM (3D, same cells):", ""]
        lines.append("| method | " + " | ".join(f"{r:g}x" for r in ratios) + " |")
        lines.append("|---|" + "---|" * len(ratios))
        for method in methods:
            row_text = " | ".join(_cell_text(by_key.get((method, r)), measure) for r in ratios)
            lines.append(f"| {method} | {row_text} |")
    lines += seconds_lines(rows, ratios)
    lines += verdict_lines(rows, ratios)
    if seeded:
        lines += [
            "",
            "Seeds (PSNR dB of each seed's cell, the same budget):",
            "",
            "| method | ratio | seeds | PSNR by seed | mean | spread |",
            "|---|---|---|---|---|---|",
        ]
        for r in seeded:
            lines.append(
                f"| {r['method']} | {r['target']:g}x | {', '.join(map(str, r['seeds']))} | "
                f"{' / '.join(f'{p:.2f}' for p in r['psnrs'])} | {r['psnr']:.2f} | "
                f"{max(r['psnrs']) - min(r['psnrs']):.2f} |"
            )
    ablations = [r for r in rows if r["kind"] == "ablation"]
    if ablations:
        ratio = ablations[0]["target"]
        base = {r["method"]: r for r in rows if r["target"] == ratio and r["kind"] == "moec"}
        default = base.get(CLAIM[0].name)
        lines += [
            "",
            f"Ablations at {ratio:g}x (same file size, same training time; against the default: the "
            "difference of the means in dB, and on how many seeds, paired, the row is ahead):",
            "",
            "| variant | ratio | PSNR dB | SSIM | steps | experts used | against the default |",
            "|---|---|---|---|---|---|---|",
        ]
        # As the run plans them: the default first, then the claim and context rows, then the ablations.
        plan = {m.name: i for i, m in enumerate(CLAIM + ABLATIONS)}
        ordered = sorted([*base.values(), *ablations], key=lambda r: plan.get(r["method"], len(plan)))
        for r in ordered:
            if r.get("reached"):
                versus = "" if r is default else _versus(r, default)
                lines.append(
                    f"| {r['method']} | {r['ratio']:.1f} | {_cell_text(r)} | {_cell_text(r, 'ssim')} | "
                    f"{r['steps']} | {r.get('experts_used', '')} | {versus} |"
                )
    older = list(
        dict.fromkeys(
            r["method"]
            for r in cells
            if r.get("reached") and r["kind"] != "classical" and r.get("format", 4) < SMALL_HEADER_VERSION
        )
    )
    if older:
        # Cached cells keep the file format they were measured with; a header before version 5 is
        # larger, which matters at high ratios (docs/benchmarks.md, "Quantization and entropy coding").
        lines += [
            "",
            f"Measured with a .moec format before version {SMALL_HEADER_VERSION} (a larger header) "
            f"than this program's version {VERSION}: " + "; ".join(older) + ".",
        ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{c} ({why})" for c, why in skipped.items())]
    return "\n".join(lines) + "\n"


def seconds_lines(rows: list[dict], ratios: list[float]) -> list[str]:
    """The classical codecs' encode and decode seconds by ratio (the kept setting's encode, not the
    search's, and its decode), where the cells recorded them (cells cached before did not)."""
    timed = [r for r in rows if r["kind"] == "classical" and r.get("encode_seconds") is not None]
    if not timed:
        return []
    by_key = {(r["method"], r["target"]): r for r in timed}
    lines = [
        "",
        "Classical codecs, seconds to encode / decode at the kept setting (the search's other encodes not counted):",
        "",
        "| method | " + " | ".join(f"{r:g}x" for r in ratios) + " |",
        "|---|" + "---|" * len(ratios),
    ]
    for method in dict.fromkeys(r["method"] for r in timed):
        cells = [by_key.get((method, ratio)) for ratio in ratios]
        text = " | ".join(f"{c['encode_seconds']:.2f} / {c['decode_seconds']:.2f}" if c else "" for c in cells)
        lines.append(f"| {method} | {text} |")
    return lines


def volumes_markdown(out: Path, names: list[str]) -> str:
    """One report over several volumes' benchmarks (out/NAME/results.md each): a section per volume,
    named and described, with its tables and verdicts; a volume not yet run says so."""
    lines = [
        f"Benchmarks of {len(names)} volumes, one section each (cells, results.json and rd.png in the "
        "folder of its name).",
        "",
    ]
    for name in names:
        lines.append(f"## {name}")
        lines.append("")
        report = out / name / "results.md"
        if not report.exists():
            lines += ["Not run yet.", ""]
            continue
        describe = json.loads((out / name / "results.json").read_text())["volume"]
        spacing = describe.get("spacing")
        if spacing:
            lines += [
                f"{Path(describe.get('source', '')).name or name}: voxels of "
                f"{' x '.join(f'{s:.3g}' for s in spacing)} mm.",
                "",
            ]
        lines += [report.read_text().rstrip(), ""]
        if (out / name / "rd.png").exists():
            lines += [f"![rate-distortion of {name}]({name}/rd.png)", ""]
    return "\n".join(lines)


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
    default = DEFAULT
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
        claim.append(
            f"| {ratio:g}x | {order} | {'yes' if first else 'no'} | {_every_seed(cells)} | "
            f"{'yes' if holds else 'no'} | {partition} |"
        )
    if claim:
        lines += [
            "",
            "The central claim at equal size and time, by PSNR: the learned partition above the blocks and "
            "the single SIREN (on the means, then on every seed: its worst seed above their best), "
            "and the whole order learned > blocks > single SIREN; last, what the partition itself "
            "adds: the learned partition against one MLP on the same grid (dB):",
            "",
            "| ratio | order | learned above both | on every seed | whole order | partition vs one MLP |",
            "|---|---|---|---|---|---|",
            *claim,
        ]
    against = []
    for ratio in ratios:
        ours = by_key.get((default, ratio))
        rivals = [r for r in rows if r["kind"] == "classical" and r["target"] == ratio and r.get("reached")]
        if not (ours and ours.get("reached") and rivals):
            continue
        best = max(rivals, key=lambda r: r["psnr"])
        against.append(
            f"| {ratio:g}x | {ours['psnr']:.2f} | {best['method']} {best['psnr']:.2f} | "
            f"{ours['psnr'] - best['psnr']:+.2f} |"
        )
    if against:
        lines += [
            "",
            "The default against the best classical codec that reaches the ratio:",
            "",
            "| ratio | MoEC default | best classical | difference dB |",
            "|---|---|---|---|",
            *against,
        ]
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
        points = sorted(
            (r["ratio"], r["psnr"])
            for r in rows
            if r["method"] == method and r["kind"] != "ablation" and r.get("reached")
        )
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
