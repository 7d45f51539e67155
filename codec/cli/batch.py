"""`moec batch`: every volume under a folder, on a dask cluster, resumable, with a cohort report.

codec.cohort.run yields what happens (a volume refused, the engine started, a volume finished, the
end); this module says it: a progress bar on a terminal, a line per volume otherwise, the table
and the summary at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from codec.cli.console import EXIT_ERROR, memory_limit, to_json
from codec.io.files import terminal_safe

if TYPE_CHECKING:
    from codec.cohort.jobs import VolumeResult
    from codec.cohort.run import CohortSummary, Event, Finished, Started


def cmd_batch(args: argparse.Namespace) -> int:
    from codec.cohort import report as cohort_report
    from codec.cohort.engine import Engine
    from codec.cohort.jobs import CohortSettings
    from codec.cohort.manifest import MANIFEST
    from codec.cohort.run import run

    settings = CohortSettings(
        ratio=args.ratio,
        minutes=args.minutes,
        steps=args.steps,
        experts=args.experts,
        seed=args.seed,
        batch_size=args.batch,
        device=args.device,
        keep_identity=bool(getattr(args, "keep_identity", False)),
    )
    # Without --max-memory each task takes the default share of the machine it runs on (a worker
    # of a remote cluster has its own), not of this one.
    memory = memory_limit(args) if getattr(args, "max_memory", None) is not None else None
    engine = Engine(scheduler=args.scheduler, workers=args.workers, threads=args.threads, memory=memory)
    if args.report:
        cohort_report.check_available()
        report = Path(args.report)
        if report.exists() and not report.is_dir():
            from codec.errors import OutputError

            raise OutputError(f"{report} is a file, not a folder for the report")
    output = Path(args.output)
    try:
        summary = follow(
            run(Path(args.input), output, settings, engine=engine, force=args.force),
            bar=not args.quiet,
            quiet=args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"moec: interrupted; every volume that finished is in {output / MANIFEST}: run the same "
            "command again to go on",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(to_json([asdict(r) for r in summary.rows]))
    else:
        print(cohort_report.table(summary.rows))  # escaped cell by cell, so that its columns line up
        print()
        minutes = summary.seconds / 60
        rate = f", {summary.compressed / (summary.seconds / 3600):.1f} volumes per hour" if summary.compressed else ""
        before = f"; {summary.skipped} finished before" if summary.skipped else ""
        print(
            f"{summary.compressed} compressed in {minutes:.1f} min on {terminal_safe(summary.engine)}{rate}{before}; "
            f"{summary.failed} failed"
        )
        print(f"manifest: {output / MANIFEST}")
    if args.report:
        md, png = cohort_report.write_report(
            summary.rows, args.report, f"{Path(args.input).resolve().name}: {settings.key}"
        )
        print(f"report: {md}, {png}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_ERROR if summary.failed else 0


def follow(events: Generator[Event, None, None], *, bar: bool, quiet: bool = False) -> CohortSummary:
    """Drive a cohort's run to its end, saying what happens on stderr (`bar`: a progress bar when
    stderr is a terminal; `quiet`: nothing, the table at the end says it all); its summary.
    Whatever stops it (a Ctrl-C) closes the run, which stops its engine."""
    from codec.cohort.run import Done, Finished, Refused, Started

    shown: _Progress | None = None
    with closing(events):
        try:
            for event in events:
                if quiet and not isinstance(event, Done):
                    continue
                if isinstance(event, Refused):
                    _say(f"failed {event.result.name}: {event.result.error}")
                elif isinstance(event, Started):
                    shown = _Progress(event, bar=bar)
                elif isinstance(event, Finished) and shown is not None:
                    shown.finished(event)
                elif isinstance(event, Done):
                    return event.summary
        finally:
            if shown is not None:
                shown.close()
    raise RuntimeError("a cohort's run ended without its summary")


class _Progress:
    """The volumes of a run as they finish: a bar on a terminal, the lines written above it; the
    bar redraws one line, which a log file garbles, so elsewhere each volume's line carries the
    count and the running means instead."""

    def __init__(self, started: Started, *, bar: bool):
        from tqdm import tqdm

        self.tty = bar and sys.stderr.isatty()
        self.bar = tqdm(
            total=started.todo,
            unit="volume",
            desc="moec batch",
            file=sys.stderr,
            disable=not self.tty,
            dynamic_ncols=True,
            smoothing=0,
        )
        self.say(
            f"{started.todo} volume(s) to compress"
            + (f", {started.skipped} already finished" if started.skipped else "")
            + f", on {started.engine}"
        )

    def say(self, text: str) -> None:
        if self.tty:
            self.bar.write(terminal_safe(text), file=sys.stderr)
        else:
            _say(text)

    def finished(self, event: Finished) -> None:
        means = _means(event.mean_ratio, event.mean_psnr)
        self.say(
            f"[{event.done}/{event.total}] {_line(event.result)}"
            + (f" (cohort: {means})" if means and not self.tty else "")
        )
        self.bar.update(1)
        if means:
            self.bar.set_postfix_str(means)

    def close(self) -> None:
        self.bar.close()


def _say(text: str) -> None:
    # Names and errors come from the files: no escape sequence they hold reaches the terminal.
    print(terminal_safe(text), file=sys.stderr, flush=True)


def _means(ratio: float | None, psnr: float | None) -> str:
    """The running mean ratio and PSNR of the volumes compressed so far, in words ("" for none)."""
    mean_psnr = f", {psnr:.2f} dB" if psnr is not None else ""
    return f"mean {ratio:.0f}x{mean_psnr}" if ratio is not None else mean_psnr.lstrip(", ")


def _line(result: VolumeResult) -> str:
    if not result.ok:
        return f"failed {result.name}: {result.error}"
    psnr = "undefined" if result.psnr is None else f"{result.psnr:.2f} dB"
    return (
        f"ok {result.name} ({result.modality or 'NIfTI'} {result.shape}): {result.ratio:.1f}x, "
        f"PSNR {psnr}, SSIM {result.ssim:.4f}, {result.seconds:.0f} s"
    )
