"""Time to quality: how good a file MoEC writes after 1, 2, 5 and 10 minutes of training, against the
classical codecs, which take seconds.

Each development volume (the MNI152 brain template, the chest CT, the brain MR) at 256x, 1024x and
4096x, with the default settings (the number of experts left to the trial) and each training budget.
A cell records the PSNR and SSIM of the file as written (encoded to bytes, decoded from them,
measured by codec.pipeline.evaluate), the ratio on file, the steps trained, the model kept and the
wall seconds a user waits: training, encode and measure. `--steps` gives step budgets instead of
minutes, for comparisons that do not depend on the machine's speed.

Prints a table (PSNR per budget and the best classical codec at each ratio, read from
benchmarks/results/classical_strongest.json) and writes benchmarks/results/time_to_quality.json
after every cell (atomically: `--resume` skips the cells already there, so an interrupted run loses
at most one) and docs/time_to_quality.png: PSNR against wall minutes, one panel per volume and
ratio, the classical codecs as horizontal lines with a marker at their encode time. The full run
trains 3 volumes x 3 ratios x 18 minutes, about 2 h 45 min, plus encoding and measuring.

    python benchmarks/time_to_quality.py [--volumes template ct mr] [--ratios 256 1024 4096]
        [--minutes 1 2 5 10 | --steps S ...] [--threads N] [--resume]
        [--out benchmarks/results/time_to_quality.json] [--plot docs/time_to_quality.png]
    python benchmarks/time_to_quality.py --plot-only [--out JSON] [--plot PNG]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from pathlib import Path

import torch
from common import BRAIN, CT, RESULTS, ROOT, machine, table

from codec import pipeline
from codec.errors import MoecError
from codec.format import moecfile
from codec.io.files import atomic_write_bytes
from codec.io.limits import cpu_cores
from codec.io.load import load_volume
from codec.settings import TrainConfig

MR = ROOT.parent / "shared" / "data" / "brain_mr_brain2.nii.gz"
#: Short name -> (the label classical_strongest.json gives the volume, its path).
VOLUMES = {
    "template": ("MNI152 brain (uint8)", BRAIN),
    "ct": ("chest CT (int16)", CT),
    "mr": ("brain MR (int16)", MR),
}
RATIOS = (256.0, 1024.0, 4096.0)
MINUTES = (1.0, 2.0, 5.0, 10.0)
CLASSICAL = RESULTS / "classical_strongest.json"
#: Classical codecs as the plot names them, in the order of its legend, each with its colour.
CODECS = {
    "AV1 (libaom)": ("AV1", "tab:red"),
    "HEVC (x265)": ("HEVC", "tab:orange"),
    "H.264 (x264)": ("H.264", "tab:olive"),
    "JPEG 2000": ("JPEG 2000", "tab:blue"),
    "SPERR": ("SPERR", "tab:purple"),
}


def key(name: str, ratio: float, budget: float, unit: str) -> str:
    return f"{name} {ratio:g}x {budget:g} {unit}"


def budget_text(budget: float, unit: str) -> str:
    return f"{budget:g} min" if unit == "minutes" else f"{budget:g} steps"


def measure(volume, ratio: float, budget: float, unit: str) -> dict:
    """One cell: compress with the default settings for the budget, write the bytes, decode them, measure."""
    config = TrainConfig(minutes=budget) if unit == "minutes" else TrainConfig(steps=int(budget))
    start = time.perf_counter()
    try:
        compression = pipeline.Compression(volume, pipeline.Settings(ratio=ratio), config)
        compression.train()
        trained = time.perf_counter()
        made = compression.encode()
        encoded = time.perf_counter()
        evaluation = compression.evaluate(moecfile.from_bytes(made.data))
    except MoecError as exc:  # a ratio the volume cannot reach, a model that diverged
        return {"error": str(exc)}
    end = time.perf_counter()
    plan = compression.plan
    return {
        "psnr": evaluation.quality.psnr,
        "ssim": evaluation.quality.ssim,
        "ratio": evaluation.ratio,
        "bytes": len(made.data),
        "steps": made.steps,  # the kept model's; the trial's other candidates spent the rest of a step budget
        "experts": plan.model.experts,  # the model kept (after the trial, when the settings left it open)
        "experts_used": sum(1 for e in evaluation.experts if e.share > 0),
        "latent_bits": plan.quant.latent_bits,
        "train_seconds": trained - start,
        "encode_seconds": encoded - trained,
        "measure_seconds": end - encoded,
        "seconds": end - start,  # what the user waits: training, encode and measure
        "notes": list(made.notes),
    }


def classical_rows(path: Path) -> list[dict]:
    """The classical codecs' cells that reached their ratio (none when the file is absent)."""
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r.get("reached")]


def best_classical(rows: list[dict], label: str, ratio: float) -> dict | None:
    mine = [r for r in rows if r["volume"] == label and r["target"] == ratio]
    return max(mine, key=lambda r: r["psnr"]) if mine else None


def summary(cells: list[dict], classical: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The printed table: a row per volume and ratio, PSNR per budget, the best classical codec."""
    budgets = sorted({(c["unit"], c["budget"]) for c in cells}, key=lambda b: (b[0] != "minutes", b[1]))
    columns = [("volume", "volume", ""), ("ratio", "ratio", "")]
    columns += [(f"{budget_text(b, u)} (dB)", f"{u} {b:g}", "") for u, b in budgets]
    columns.append(("best classical (dB, encode s)", "classical", ""))
    rows: dict[tuple[str, float], dict] = {}
    for c in cells:
        row = rows.setdefault((c["volume"], c["target"]), {"volume": c["volume"], "ratio": f"{c['target']:g}x"})
        row[f"{c['unit']} {c['budget']:g}"] = "not reached" if "error" in c else f"{c['psnr']:.2f}"
    for (label, ratio), row in rows.items():
        for u, b in budgets:
            row.setdefault(f"{u} {b:g}", "")
        top = best_classical(classical, label, ratio)
        row["classical"] = f"{top['codec']} {top['psnr']:.2f} ({top['encode_seconds']:.1f} s)" if top else ""
    return list(rows.values()), columns


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


def spread(values: list[float], gap: float, low: float, high: float) -> list[float]:
    """`values` (sorted ascending) moved apart to at least `gap` from each other, kept in [low, high]."""
    out = list(values)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    if out and out[-1] > high:
        out[-1] = high
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return [max(v, low) for v in out]


def plot(cells: list[dict], classical: list[dict], path: Path) -> None:
    """PSNR against wall minutes, one panel per volume (rows) and ratio (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    done = [c for c in cells if "error" not in c]
    labels = [label for label, _ in VOLUMES.values() if any(c["volume"] == label for c in cells)]
    ratios = sorted({c["target"] for c in cells})
    if not labels:
        raise SystemExit("no cells to plot")
    rows, cols = len(labels), len(ratios)
    width = max(3.9 * cols + 0.9, 7.5)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width, 3.0 * rows + 1.2), squeeze=False, sharex=True, layout="constrained"
    )
    minutes = [c["seconds"] / 60 for c in done] + [r["encode_seconds"] / 60 for r in classical]
    left = 10 ** math.floor(math.log10(max(min(minutes, default=0.01), 1e-4)))
    right = 1.6 * max(minutes, default=10.0)
    styles = {
        "minutes": ("o", "-", "MoEC (budget in minutes by each point)"),
        "steps": ("s", "--", "MoEC (budget in steps by each point)"),
    }
    for i, label in enumerate(labels):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            ax.set_xscale("log")
            ax.set_xlim(left, right)
            ax.grid(True, which="major", alpha=0.3)
            values = []
            for unit, (marker, line, _) in styles.items():
                mine = sorted(
                    (c for c in done if c["volume"] == label and c["target"] == ratio and c["unit"] == unit),
                    key=lambda c: c["seconds"],
                )
                if not mine:
                    continue
                xs, ys = [c["seconds"] / 60 for c in mine], [c["psnr"] for c in mine]
                ax.plot(xs, ys, marker=marker, linestyle=line, color="black", markersize=5, linewidth=1.5, zorder=3)
                for c, x, y in zip(mine, xs, ys):
                    ax.annotate(
                        f"{c['budget']:g}",
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, -3),
                        ha="left",
                        va="top",
                        fontsize=9,
                        color="0.25",
                    )
                values += ys
            lines = []
            for r in classical:
                if r["volume"] == label and r["target"] == ratio and r["codec"] in CODECS:
                    name, colour = CODECS[r["codec"]]
                    ax.axhline(r["psnr"], color=colour, linestyle=":", linewidth=1.4, zorder=1)
                    ax.plot(max(r["encode_seconds"] / 60, left), r["psnr"], "D", color=colour, markersize=5, zorder=2)
                    lines.append((r["psnr"], name, colour))
                    values.append(r["psnr"])
            if not values:
                ax.text(0.5, 0.5, "ratio not reached", transform=ax.transAxes, ha="center", va="center")
            else:
                low, high = min(values), max(values)
                pad = max(0.5, 0.12 * (high - low))
                ax.set_ylim(low - pad, high + pad)
                bottom, top = ax.get_ylim()
                lines.sort()
                placed = spread([p for p, _, _ in lines], 0.085 * (top - bottom), bottom, top)
                for (_, name, colour), y in zip(lines, placed):
                    ax.text(1.02, y, name, transform=ax.get_yaxis_transform(), color=colour, fontsize=10, va="center")
            ax.set_title(f"{label}, {ratio:g}x", fontsize=11)
            ax.tick_params(labelsize=10)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            if j == 0:
                ax.set_ylabel("PSNR (dB)", fontsize=11)
            if i == rows - 1:
                ax.set_xlabel("wall time (minutes, log scale)", fontsize=11)
    units = {c["unit"] for c in done}
    handles = [
        Line2D([], [], color="black", marker=styles[u][0], linestyle=styles[u][1], label=styles[u][2])
        for u in ("minutes", "steps")
        if u in units
    ]
    shown = {r["codec"] for r in classical if r["volume"] in labels and r["target"] in ratios}
    handles += [
        Line2D([], [], color=colour, linestyle=":", label=name)
        for codec, (name, colour) in CODECS.items()
        if codec in shown
    ]
    if shown:
        handles.append(Line2D([], [], color="0.4", marker="D", linestyle="none", label="classical encode time"))
    columns = max(1, min(len(handles), int(width / 3.2)))
    fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=11, frameon=False)
    fig.suptitle(
        "PSNR of the file as written against the wall time a user waits (training, encode, measure);\n"
        "dotted: the classical codecs at the same ratio, a diamond at their encode time",
        fontsize=12,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--minutes", type=float, nargs="+", default=list(MINUTES), help="training budgets")
    parser.add_argument("--steps", type=int, nargs="+", help="step budgets instead of minutes (reproducible)")
    parser.add_argument("--threads", type=int, default=cpu_cores(), help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS / "time_to_quality.json", help="the JSON written")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "time_to_quality.png", help="the PNG drawn")
    parser.add_argument("--classical", type=Path, default=CLASSICAL, help="the classical codecs' results")
    parser.add_argument("--resume", action="store_true", help="skip the cells already in --out")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG (and the table) from --out")
    args = parser.parse_args()
    classical = classical_rows(args.classical)
    if not classical:
        print(f"no classical results at {args.classical}: the plot has MoEC alone")

    if args.plot_only:
        if not args.out.exists():
            raise SystemExit(f"no results at {args.out}")
        cells = json.loads(args.out.read_text())["cells"]
    else:
        unit = "steps" if args.steps else "minutes"
        budgets = [float(s) for s in args.steps] if args.steps else args.minutes
        if any(b <= 0 for b in budgets) or args.threads < 1:
            raise SystemExit("budgets and --threads must be positive")
        torch.set_num_threads(args.threads)
        done = {}
        if args.resume and args.out.exists():
            done = {c["key"]: c for c in json.loads(args.out.read_text())["cells"]}
        print(f"{torch.get_num_threads()} threads; budgets: {', '.join(budget_text(b, unit) for b in budgets)}")
        for name in args.volumes:
            label, path = VOLUMES[name]
            volume = None
            for ratio in args.ratios:
                for budget in budgets:
                    k = key(name, ratio, budget, unit)
                    if k in done:
                        continue
                    if volume is None:
                        if not path.exists():
                            raise SystemExit(f"the {label} is not at {path}")
                        volume = load_volume(path)
                    cell = {"key": k, "volume": label, "name": name, "target": ratio, "unit": unit, "budget": budget}
                    cell.update(measure(volume, ratio, budget, unit))
                    gc.collect()
                    done[k] = cell
                    payload = {"machine": machine(), "threads": args.threads, "cells": list(done.values())}
                    write(args.out, payload)
                    print(
                        f"{name} {ratio:g}x {budget_text(budget, unit)}: "
                        + (
                            f"not reached ({cell['error']})"
                            if "error" in cell
                            else f"{cell['psnr']:.2f} dB, SSIM {cell['ssim']:.4f}, {cell['ratio']:.0f}x on file, "
                            f"{cell['steps']} steps, {cell['experts']} expert(s), {cell['seconds'] / 60:.2f} min"
                        ),
                        flush=True,
                    )
        cells = list(done.values())
        payload = {"machine": machine(), "threads": args.threads, "cells": cells, "table": summary(cells, classical)[0]}
        write(args.out, payload)
        print(f"wrote {args.out}")
    rows, columns = summary(cells, classical)
    print("\n" + table(rows, columns))
    try:
        plot(cells, classical, args.plot)
    except ImportError:
        print("matplotlib is not installed (pip install 'moec-napari[bench]'): no plot")
        return
    print(f"drew {args.plot}")


if __name__ == "__main__":
    main()
