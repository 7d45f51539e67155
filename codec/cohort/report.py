"""A batch's cohort at a glance: a table for the terminal, and a Markdown page with a PNG (--report).

The volumes are listed worst first (failures, then by PSNR), and a volume more than LOW_DB below
the median PSNR of its modality is flagged, so that a series that compressed badly stands out of a
cohort of hundreds. matplotlib (the `bench` extra) is imported only to draw the PNG.

Names, modalities and errors come from the files (a DICOM header, a file name): every cell is
escaped for where it goes, the terminal (no escape sequence), Markdown (no `|` or line break that
ends a cell or a row, no HTML) or matplotlib (no `$` that starts mathematics).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from codec.cohort.jobs import VolumeResult
from codec.errors import MoecError
from codec.io.files import atomic_write, atomic_write_bytes, check_inside, terminal_safe

#: A volume this far below its modality's median PSNR is flagged "low". A few dB is what separates
#: a series with an unusual content or noise level from the cohort's ordinary spread at one ratio.
LOW_DB = 3.0
#: Modalities need a few volumes before a median says anything.
MIN_FOR_MEDIAN = 3


def modality_of(row: VolumeResult) -> str:
    """DICOM's Modality; NIfTI files do not say theirs, nor do DICOM files that cannot be read."""
    if row.modality:
        return row.modality
    return "NIfTI" if row.input.lower().endswith((".nii", ".nii.gz")) else "DICOM"


def low_rows(rows: tuple[VolumeResult, ...]) -> set[tuple[str, str]]:
    """The keys of the volumes more than LOW_DB below the median PSNR of their modality."""
    low = set()
    for modality in {modality_of(r) for r in rows}:
        psnr = {r.key: r.psnr for r in rows if r.ok and r.psnr is not None and modality_of(r) == modality}
        if len(psnr) >= MIN_FOR_MEDIAN:
            median = statistics.median(psnr.values())
            low |= {key for key, value in psnr.items() if value < median - LOW_DB}
    return low


def worst_first(rows: tuple[VolumeResult, ...]) -> list[VolumeResult]:
    return sorted(rows, key=lambda r: (r.ok, r.psnr if r.psnr is not None else float("inf"), r.name))


@dataclass(frozen=True)
class ModalityStat:
    """One modality's line of the cohort report."""

    modality: str
    ok: int
    failed: int
    mean_ratio: float | None
    mean_psnr: float | None
    worst_psnr: float | None


def by_modality(rows: tuple[VolumeResult, ...]) -> list[ModalityStat]:
    stats = []
    for modality in sorted({modality_of(r) for r in rows}):
        mine = [r for r in rows if modality_of(r) == modality]
        ok = [r for r in mine if r.ok]
        psnrs = [r.psnr for r in ok if r.psnr is not None]
        ratios = [r.ratio for r in ok if r.ratio is not None]
        stats.append(
            ModalityStat(
                modality,
                len(ok),
                len(mine) - len(ok),
                statistics.fmean(ratios) if ratios else None,
                statistics.fmean(psnrs) if psnrs else None,
                min(psnrs) if psnrs else None,
            )
        )
    return stats


def _num(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def _one_line(text: str) -> str:
    """`text` with every control character (line breaks, tabs, escapes) a space."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def md_text(text: str) -> str:
    """`text` as the content of a Markdown table cell: on one line, its `|` escaped (GitHub's table
    rule, which holds inside code spans too) and no HTML."""
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def md_code(text: str) -> str:
    """`text` as a code span in a Markdown table cell: fenced by more backticks than it holds in a
    row (CommonMark), on one line, its `|` escaped. HTML is not read inside a code span."""
    flat = _one_line(text).replace("|", "\\|")
    run = longest = 0
    for ch in flat:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _plot_text(text: str) -> str:
    """`text` as matplotlib shows it literally: `$` would start mathematics (and a bad formula fails the draw)."""
    return _one_line(text).replace("$", r"\$")


def table(rows: tuple[VolumeResult, ...], width: int = 150) -> str:
    """The volumes, worst first, then one line per modality."""
    low = low_rows(rows)
    names = {r.key: terminal_safe(r.name) for r in rows}
    name_width = min(48, max([6] + [len(name) for name in names.values()]))
    lines = [
        f"{'':4}  {'volume':<{name_width}}  {'modality':<8}  {'shape':<13}  {'ratio':>8}  {'PSNR':>8}  "
        f"{'SSIM':>6}  {'seconds':>7}"
    ]
    for r in worst_first(rows):
        name = names[r.key]
        name = name if len(name) <= name_width else "..." + name[-(name_width - 3) :]
        modality = terminal_safe(modality_of(r))
        if not r.ok:
            text = f"FAIL  {name:<{name_width}}  {modality:<8}  {terminal_safe(r.error)}"
            lines.append(text if len(text) <= width else text[: width - 3] + "...")
            continue
        mark = "low " if r.key in low else "ok  "
        lines.append(
            f"{mark}  {name:<{name_width}}  {modality:<8}  {terminal_safe(r.shape):<13}  {r.ratio:>7.1f}x  "
            f"{_num(r.psnr, '.2f'):>8}  {_num(r.ssim, '.4f'):>6}  {r.seconds:>7.0f}"
        )
    lines.append("")
    for s in by_modality(rows):
        lines.append(
            f"{terminal_safe(s.modality)}: {s.ok} compressed"
            + (f", {s.failed} failed" if s.failed else "")
            + (
                f"; mean {s.mean_ratio:.1f}x, mean PSNR {_num(s.mean_psnr, '.2f')} dB, worst "
                f"{_num(s.worst_psnr, '.2f')} dB"
                if s.ok
                else ""
            )
        )
    if low:
        lines.append(f"low: more than {LOW_DB:g} dB below the median PSNR of its modality")
    return "\n".join(lines)


def check_available() -> None:
    """MoecError before any work when the PNG of --report cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MoecError(
            "--report draws its figure with matplotlib, which is not installed: pip install 'moec-napari[bench]'"
        ) from None


def write_report(rows: tuple[VolumeResult, ...], folder: str | Path, title: str) -> tuple[Path, Path]:
    """report.md and cohort.png in `folder` (created if needed), both written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, md = folder / "cohort.png", folder / "report.md"
    check_inside(folder, png)
    check_inside(folder, md)
    _plot(rows, png, title)
    low = low_rows(rows)
    stats = by_modality(rows)
    text = [
        f"# {md_text(title)}",
        "",
        f"![PSNR and ratio per volume, by modality]({png.name})",
        "",
        "| modality | compressed | failed | mean ratio | mean PSNR (dB) | worst PSNR (dB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        text.append(
            f"| {md_text(s.modality)} | {s.ok} | {s.failed} | {_num(s.mean_ratio, '.1f')} | "
            f"{_num(s.mean_psnr, '.2f')} | {_num(s.worst_psnr, '.2f')} |"
        )
    text += [
        "",
        f"Worst first; *low*: more than {LOW_DB:g} dB below the median PSNR of its modality.",
        "",
        "| | volume | modality | shape | ratio | PSNR (dB) | SSIM | seconds |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in worst_first(rows):
        if r.ok:
            mark = "**low**" if r.key in low else "ok"
            text.append(
                f"| {mark} | {md_code(r.name)} | {md_text(modality_of(r))} | {md_text(r.shape)} | "
                f"{r.ratio:.1f}x | {_num(r.psnr, '.2f')} | {_num(r.ssim, '.4f')} | {r.seconds:.0f} |"
            )
        else:
            text.append(f"| **failed** | {md_code(r.name)} | {md_text(modality_of(r))} | | | | | {md_text(r.error)} |")
    atomic_write_bytes(md, ("\n".join(text) + "\n").encode("utf-8"))
    return md, png


def _plot(rows: tuple[VolumeResult, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ok = sorted((r for r in rows if r.ok), key=lambda r: (modality_of(r), r.psnr if r.psnr is not None else 0.0))
    modalities = sorted({modality_of(r) for r in ok})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(modalities)}
    low = low_rows(rows)
    x = list(range(len(ok)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, min(18.0, 0.35 * len(ok) + 3)), 6.5), sharex=True)
    top.bar(
        x,
        [r.psnr or 0.0 for r in ok],
        color=[colours[modality_of(r)] for r in ok],
        edgecolor=["black" if r.key in low else "none" for r in ok],
        linewidth=1.5,
    )
    top.set_ylabel("PSNR (dB)")
    bottom.bar(x, [r.ratio for r in ok], color=[colours[modality_of(r)] for r in ok])
    bottom.set_ylabel("ratio (raw voxels / file)")
    if modalities:
        top.legend(
            handles=[Patch(color=colours[m], label=_plot_text(m)) for m in modalities], loc="lower right", fontsize=8
        )
    failed = sum(1 for r in rows if not r.ok)
    top.set_title(_plot_text(title) + (f" ({failed} failed, not shown)" if failed else ""), fontsize=10)
    if len(ok) <= 60:
        bottom.set_xticks(x)
        bottom.set_xticklabels([_plot_text(r.name) for r in ok], rotation=60, ha="right", fontsize=7)
    else:
        bottom.set_xlabel(f"{len(ok)} volumes, by modality, worst PSNR first")
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
